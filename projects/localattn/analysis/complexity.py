"""Parameters and FLOPs (MACs) of localattn models on top of :mod:`mmengine.analysis`.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (fvcore's jit-trace counter) counts the ops a
model *executes*. That is wrong for attention kernels whose implementation does extra work (the
tiled CPU/pure-torch NA computes logits for a tile plus its halo, the reference NA gathers keys) or
hides it (fused kernels are invisible to the tracer). The papers count attention analytically:
one NA call costs ``2 * B * N * heads * head_dim * k^2`` multiply-adds (``N * k^2 * C`` for ``q . k``
plus the same for ``attn @ v``, ``C = heads * head_dim``, ``N`` = number of real tokens).

Design: *analytic function counters*. An attention op is registered as ``(owner, attribute name,
MAC formula)``; e.g. ``na2d`` as bound in :mod:`localattn.layers.neighborhood_attention`. Inside
:func:`analytic_flop_counting` the attribute is replaced by a wrapper that runs the real op as ONE
opaque traced node (a ``torch.autograd.Function``, which the jit tracer records as
``prim::PythonOp.<name>`` without its internals) and carries the analytic MAC count in the shape of a
zero-element marker input ``[0, macs]``. A matching op handle on the analyzer reads it back. So

* the op's internals (tile halos, gathers, masks, padding) are never counted,
* everything around it (``qkv`` and ``proj`` linears, MLPs, convs, norms) is still counted by the
  tracer per module, and the table keeps its per-module rows, and
* the counted op appears in ``flops_by_operator`` under its label (``'neighborhood_attention'``).

Other attention ops (e.g. QnA) plug in with :func:`register_function_counter`. The wrapper is
forward-only (counting runs under ``torch.no_grad``). mmengine reports multiply-adds as "flops"
(fvcore convention), which is what the papers call FLOPs.
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn

__all__ = ['count_flops_params', 'analytic_flop_counting', 'register_function_counter',
           'unregister_function_counter', 'na_macs', 'FunctionCounter']


@dataclass
class FunctionCounter:
    """An attention function counted analytically.

    Attributes:
        owner: the object (usually a module namespace) whose attribute ``name`` is the function as
            the layer calls it.
        name: attribute name on ``owner``.
        macs: ``macs(*args, **kwargs) -> int``, called with the function's arguments.
        label: operator name in ``flops_by_operator``.
        module_types: layer classes that must have called the function during the trace if present
            in the model; counting raises otherwise (the layer stopped calling ``owner.name``).
    """
    owner: Any
    name: str
    macs: Callable[..., int]
    label: str
    module_types: Tuple[Type[nn.Module], ...] = ()
    op: type = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.op = type(f'AnalyticFlops_{self.label}', (_AnalyticOp, ), {})

    @property
    def op_name(self) -> str:
        """The jit node kind the analyzer sees."""
        return f'prim::PythonOp.{self.op.__name__}'


class _AnalyticOp(torch.autograd.Function):
    """Runs ``thunk()`` as one opaque traced node; ``marker`` (shape ``[0, macs]``) carries the count."""

    @staticmethod
    def forward(ctx, thunk, marker, *tensors):  # noqa: D102
        # Pause the tracer: the op's internals are neither counted nor worth recording.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return thunk()
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        raise RuntimeError('analytic FLOP counting wrappers are forward-only')


_COUNTERS: Dict[Tuple[int, str], FunctionCounter] = {}
_DEFAULTS_REGISTERED = False


def register_function_counter(owner: Any, name: str, macs: Callable[..., int], label: str,
                              module_types: Sequence[Type[nn.Module]] = ()) -> FunctionCounter:
    """Count ``owner.<name>`` analytically with ``macs(*args, **kwargs)`` (see :class:`FunctionCounter`).

    Registering the same ``(owner, name)`` again replaces the previous counter.
    """
    if not callable(getattr(owner, name, None)):
        raise ValueError(f'{owner!r} has no function {name!r}')
    counter = FunctionCounter(owner, name, macs, label, tuple(module_types))
    _COUNTERS[(id(owner), name)] = counter
    return counter


def unregister_function_counter(owner: Any, name: str) -> None:
    """Remove the counter of ``owner.<name>`` (no-op if none)."""
    _COUNTERS.pop((id(owner), name), None)


def na_macs(query: Tensor, key: Tensor = None, value: Tensor = None, kernel_size=None, *args,
            valid_size=None, **kwargs) -> int:
    """MACs of one NA call (``na1d/na2d/na3d`` signature): ``2 * B * N * heads * head_dim * prod(k)``.

    ``N`` counts real tokens: the product of ``valid_size`` when the map was padded, else of the
    spatial sizes. Queries always see ``prod(k)`` keys (windows are shifted, not clipped, at borders;
    the NA layer lowers ``k`` on axes shorter than ``k * dilation``, where whole groups are attended).
    """
    spatial = tuple(query.shape[1:-2])
    n = len(spatial)
    kernel = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size, ) * n
    valid = spatial if valid_size is None else (
        tuple(valid_size) if isinstance(valid_size, (tuple, list)) else (valid_size, ) * n)
    batch, heads, head_dim = query.shape[0], query.shape[-2], query.shape[-1]
    return 2 * batch * math.prod(valid) * heads * head_dim * math.prod(kernel)


def _register_defaults() -> None:
    """Register localattn's own attention ops once (NA as the NA layer calls it)."""
    global _DEFAULTS_REGISTERED
    if _DEFAULTS_REGISTERED:
        return
    _DEFAULTS_REGISTERED = True
    from ..layers import NeighborhoodAttention2d
    from ..layers import neighborhood_attention as na_layer_module
    register_function_counter(na_layer_module, 'na2d', na_macs, 'neighborhood_attention',
                              module_types=(NeighborhoodAttention2d, ))


def _concrete(value: Any) -> Any:
    """Integer 0-dim tensors (what ``x.shape[i]`` gives while jit-tracing) -> ints, recursively."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
        return int(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_concrete(v) for v in value)
    return value


def _wrap(counter: FunctionCounter, original: Callable, calls: Counter) -> Callable:
    def counted(*args, **kwargs):
        args = tuple(_concrete(a) for a in args)
        kwargs = {k: _concrete(v) for k, v in kwargs.items()}
        macs = int(counter.macs(*args, **kwargs))
        # every tensor the op reads must be an input of the traced node (the tracer maps its
        # internals onto the node's inputs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        if not tensors:
            return original(*args, **kwargs)
        calls[counter.label] += 1
        marker = tensors[0].new_empty((0, macs))
        return counter.op.apply(lambda: original(*args, **kwargs), marker, *tensors)
    counted.__wrapped__ = original
    return counted


def _handle(label: str) -> Callable:
    def handle(inputs: List[Any], outputs: List[Any]) -> Counter:
        return Counter({label: int(inputs[0].type().sizes()[1])})
    return handle


@contextlib.contextmanager
def analytic_flop_counting(analyzer: Any = None,
                           counters: Optional[Sequence[FunctionCounter]] = None) -> Iterator[Counter]:
    """Swap the registered attention functions for their counted wrappers.

    Args:
        analyzer: an mmengine ``FlopAnalyzer`` to give the op handles to. Without it the handles go
            into mmengine's default op table for the duration, so plain
            ``mmengine.analysis.get_model_complexity_info`` counts attention analytically too.
        counters: default: every registered counter.

    Yields:
        a ``Counter`` of wrapper calls per label (filled while the model runs).
    """
    _register_defaults()
    counters = list(_COUNTERS.values()) if counters is None else list(counters)
    calls: Counter = Counter()
    handles = {c.op_name: _handle(c.label) for c in counters}
    default_ops = None
    if analyzer is not None:
        analyzer.set_op_handle(**handles)
    else:
        from mmengine.analysis import complexity_analysis
        default_ops = complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS
        saved = {k: default_ops.get(k) for k in handles}
        default_ops.update(handles)
    originals = []
    try:
        for c in counters:
            original = getattr(c.owner, c.name)
            originals.append((c, original))
            setattr(c.owner, c.name, _wrap(c, original, calls))
        yield calls
    finally:
        for c, original in reversed(originals):
            setattr(c.owner, c.name, original)
        if default_ops is not None:
            for k, v in saved.items():
                if v is None:
                    default_ops.pop(k, None)
                else:
                    default_ops[k] = v


def _make_inputs(model: nn.Module, input_shape: Union[Sequence[int], Sequence[Sequence[int]]]
                 ) -> Tuple[Tensor, ...]:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    if all(isinstance(s, int) for s in input_shape):
        shapes = [tuple(input_shape)]
    else:
        shapes = [tuple(s) for s in input_shape]
    return tuple(torch.randn(1, *s, device=device) for s in shapes)


def count_flops_params(model: nn.Module, input_shape: Sequence = (3, 224, 224),
                       inputs: Optional[Union[Tensor, Tuple[Any, ...]]] = None,
                       max_depth: int = 3, show_param_shapes: bool = False) -> Dict[str, Any]:
    """Parameters and FLOPs (multiply-adds) of ``model`` for one input, attention counted analytically.

    Args:
        model: any ``nn.Module`` (e.g. an mmpretrain ``ImageClassifier`` or a bare backbone);
            temporarily put in eval mode.
        input_shape: shape without batch, e.g. ``(3, 224, 224)`` (a batch of 1 is used), or a tuple
            of shapes for several inputs.
        inputs: explicit forward inputs instead of ``input_shape``.
        max_depth: depth of the per-module table.
        show_param_shapes: list parameter shapes in the table.

    Returns:
        dict with ``flops`` (int, MACs, mmengine/fvcore convention), ``params`` (int), ``table``
        (mmengine's per-module table), ``flops_by_operator`` (dict) and ``unsupported_ops``
        (dict of op -> calls that mmengine does not count: elementwise ops, softmax, ...).
    """
    from mmengine.analysis import FlopAnalyzer, parameter_count
    from mmengine.analysis.print_helper import complexity_stats_table

    if inputs is None:
        inputs = _make_inputs(model, input_shape)
    elif isinstance(inputs, Tensor):
        inputs = (inputs, )
    _register_defaults()
    was_training = model.training
    model.eval()
    try:
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        with torch.no_grad(), analytic_flop_counting(analyzer) as calls:
            flops = analyzer.total()
            by_operator = dict(analyzer.by_operator())
            unsupported = dict(analyzer.unsupported_ops())
            table = complexity_stats_table(analyzer, max_depth=max_depth,
                                           show_param_shapes=show_param_shapes)
        for counter in _COUNTERS.values():
            expected = [n for n, m in model.named_modules() if isinstance(m, counter.module_types)]
            if expected and not calls[counter.label]:
                raise RuntimeError(
                    f'{type(model).__name__} has {len(expected)} {counter.module_types[0].__name__} '
                    f'modules but none called {getattr(counter.owner, "__name__", counter.owner)}.'
                    f'{counter.name}; update the FLOP counter registration')
    finally:
        model.train(was_training)
    return dict(flops=int(flops), params=int(parameter_count(model)['']), table=table,
                flops_by_operator=by_operator, unsupported_ops=unsupported)
