"""Parameters and FLOPs (MACs) of localattn models on top of :mod:`mmengine.analysis`.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (fvcore's jit-trace counter) counts the ops a
model *executes*. That is wrong for attention kernels whose implementation does extra work (the
``tiles`` NA backend computes logits for a tile plus its halo, ``reference`` gathers keys) or hides
it (compiled custom ops, fused kernels and ``scaled_dot_product_attention`` are not counted). The papers
count attention analytically: one NA call costs ``2 * B * N * heads * head_dim * k^2`` multiply-adds
(``N * k^2 * C`` for ``q . k`` plus the same for ``attn @ v``, ``C = heads * head_dim``, ``N`` = number
of real tokens).

Design: *counting by module type*. A layer class is registered with a MAC formula of its *own* work,
``macs(module, inputs, output) -> int`` (what its ``forward`` computes outside its child modules).
:class:`AttentionFlopAnalyzer` traces the model like mmengine's analyzer, records each call of a
registered layer with a forward hook, and replaces the traced count of the layer's own work (its
total minus its children's) by the formula, under the label of the registration, in the layer and
all its ancestors. So

* the attention core's internals (tile halos, gathers, masks, padding, fused kernels) are never
  counted, whichever backend runs;
* everything else (``qkv`` and ``proj`` linears, MLPs, convs, norms) is still counted by the tracer
  per module, and the table keeps its per-module rows; and
* the layer's count appears in ``flops_by_operator`` under its label (``'neighborhood_attention'``).

Nothing is patched: the hooks (and a counter's ``trace_settings``, public layer attributes such as
the NA ``backend``) hold for the trace only. Other attention layers plug in with
:func:`register_module_counter`. mmengine reports multiply-adds as "flops"
(fvcore convention), which is what the papers call FLOPs.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.print_helper import complexity_stats_table
from torch import Tensor, nn

from ..layers import NeighborhoodAttention2d, WindowSelfAttention

__all__ = ['count_flops_params', 'AttentionFlopAnalyzer', 'ModuleCounter',
           'register_module_counter', 'unregister_module_counter', 'na_layer_macs',
           'window_attention_macs']

#: ``macs(module, inputs, output) -> int``: multiply-adds of one call, outside the child modules.
MacFormula = Callable[[nn.Module, Tuple[Any, ...], Any], int]


@dataclass(frozen=True)
class ModuleCounter:
    """A layer class whose own work is counted analytically.

    Attributes:
        module_type: the layer class (subclasses included).
        macs: the formula (:data:`MacFormula`).
        label: operator name in ``flops_by_operator``.
        trace_settings: public attributes set on the layers while the model is traced, restored
            afterwards. The layer's own work is replaced by the formula, so it may run any
            implementation there; this picks one that ``torch.jit.trace`` can record (NA: the
            ``unrolled`` backend, plain indexing ops, as for ONNX export).
    """
    module_type: Type[nn.Module]
    macs: MacFormula
    label: str
    trace_settings: Mapping[str, Any] = field(default_factory=dict)


def na_layer_macs(module: NeighborhoodAttention2d, inputs: Tuple[Tensor, ...], output: Any) -> int:
    """NA of one :class:`~localattn.layers.NeighborhoodAttention2d` call on ``[B, H, W, C]``:
    ``2 * B * H * W * C * k_H * k_W`` with the kernel the layer runs the map with (smaller on axes
    shorter than ``kernel_size * dilation``, where whole dilation groups are attended)."""
    batch, height, width, channels = (int(s) for s in inputs[0].shape)
    kernel, _, _ = module.window(height, width)
    return 2 * batch * height * width * channels * math.prod(kernel)


def window_attention_macs(module: WindowSelfAttention, inputs: Tuple[Tensor, ...],
                          output: Any) -> int:
    """``q @ k^T`` plus ``attn @ v`` of one :class:`~localattn.layers.WindowSelfAttention` call on
    ``[B, nW, N, C]`` windows (padded ones included): ``2 * B * nW * N^2 * C``; softmax, bias and
    mask additions are not counted."""
    batch, windows, tokens, channels = (int(s) for s in inputs[0].shape)
    return 2 * batch * windows * tokens * tokens * channels


_COUNTERS: Dict[Type[nn.Module], ModuleCounter] = {}


def register_module_counter(module_type: Type[nn.Module], macs: MacFormula, label: str,
                            trace_settings: Optional[Mapping[str, Any]] = None) -> ModuleCounter:
    """Count the own work of ``module_type`` layers with ``macs`` (see :class:`ModuleCounter`;
    replaces a previous registration of the type)."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f'module_type must be an nn.Module subclass, got {module_type!r}')
    counter = ModuleCounter(module_type, macs, label, dict(trace_settings or {}))
    _COUNTERS[module_type] = counter
    return counter


def unregister_module_counter(module_type: Type[nn.Module]) -> None:
    """Remove the counter of ``module_type`` (no-op if none)."""
    _COUNTERS.pop(module_type, None)


register_module_counter(NeighborhoodAttention2d, na_layer_macs, 'neighborhood_attention',
                        trace_settings=dict(backend='unrolled'))
register_module_counter(WindowSelfAttention, window_attention_macs, 'window_self_attention')


def _counter_of(module: nn.Module, counters: Sequence[ModuleCounter]) -> Optional[ModuleCounter]:
    return next((c for c in counters if isinstance(module, c.module_type)), None)


class AttentionFlopAnalyzer(FlopAnalyzer):
    """mmengine's ``FlopAnalyzer`` with the registered layers counted analytically.

    Args:
        model: the model.
        inputs: its forward inputs.
        counters: default: every registered :class:`ModuleCounter`.

    ``total``, ``by_operator``, ``by_module`` and ``by_module_and_operator`` (and so mmengine's
    ``complexity_stats_table``) give the adjusted counts; ``unsupported_ops`` leaves out the ops
    inside the counted layers' own work.
    """

    def __init__(self, model: nn.Module, inputs: Union[Tensor, Tuple[Any, ...]],
                 counters: Optional[Sequence[ModuleCounter]] = None) -> None:
        super().__init__(model, inputs)
        self.model = model
        self.counters = list(_COUNTERS.values()) if counters is None else list(counters)
        self._adjusted: Optional[Tuple[Dict[str, Counter], Dict[str, Counter]]] = None
        #: ``{label: calls}`` of the counted layers during the trace.
        self.calls: Counter = Counter()

    def _trace(self) -> Tuple[Dict[str, Counter], Dict[str, Counter], Dict[str, Counter]]:
        """The parent's ``(counts, unsupported ops)`` per module, and ``{name: Counter({label:
        MACs})}`` of the counted layers, recorded by forward hooks during the trace."""
        analytic: Dict[str, Counter] = {}
        handles, saved = [], []
        for name, module in self.model.named_modules():
            counter = _counter_of(module, self.counters)
            if counter is None:
                continue

            def hook(mod, inputs, output, name=name, counter=counter):
                analytic.setdefault(name, Counter())[counter.label] += int(counter.macs(mod, inputs, output))
                self.calls[counter.label] += 1

            handles.append(module.register_forward_hook(hook))
            for attr, value in counter.trace_settings.items():
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, value)
        try:
            counts = super().by_module_and_operator()
        finally:
            for handle in handles:
                handle.remove()
            for module, attr, value in saved:
                setattr(module, attr, value)
        unsupported = {name: super(AttentionFlopAnalyzer, self).unsupported_ops(name) for name in counts}
        return counts, unsupported, analytic

    def _adjust(self) -> Tuple[Dict[str, Counter], Dict[str, Counter]]:
        """Counts and unsupported ops per module with each counted layer's own work replaced."""
        if self._adjusted is not None:
            return self._adjusted
        traced, traced_unsupported, analytic = self._trace()
        counts = {name: Counter(ops) for name, ops in traced.items()}
        unsupported = {name: Counter(ops) for name, ops in traced_unsupported.items()}
        for name, replacement in analytic.items():
            children = [f'{name}.{child}' if name else child
                        for child, _ in self.model.get_submodule(name).named_children()]
            own, own_unsupported = Counter(traced[name]), Counter(traced_unsupported[name])
            for child in children:
                own.subtract(traced[child])
                own_unsupported.subtract(traced_unsupported[child])
            parts = name.split('.') if name else []
            for ancestor in ('.'.join(parts[:i]) for i in range(len(parts) + 1)):
                counts[ancestor].subtract(own)
                counts[ancestor].update(replacement)
                unsupported[ancestor].subtract(own_unsupported)
        self._adjusted = ({k: +v for k, v in counts.items()}, {k: +v for k, v in unsupported.items()})
        return self._adjusted

    def by_module_and_operator(self) -> Dict[str, Counter]:
        return self._adjust()[0]

    def by_operator(self, module_name: str = '') -> Counter:
        return self._adjust()[0].get(self.canonical_module_name(module_name), Counter())

    def total(self, module_name: str = '') -> int:
        return sum(self.by_operator(module_name).values())

    def by_module(self) -> Counter:
        return Counter({name: sum(ops.values()) for name, ops in self._adjust()[0].items()})

    def unsupported_ops(self, module_name: str = '') -> Counter:
        return self._adjust()[1].get(self.canonical_module_name(module_name), Counter())


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
    if inputs is None:
        inputs = _make_inputs(model, input_shape)
    elif isinstance(inputs, Tensor):
        inputs = (inputs, )
    was_training = model.training
    model.eval()
    try:
        analyzer = AttentionFlopAnalyzer(model, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        with torch.no_grad():
            flops = analyzer.total()
        table = complexity_stats_table(analyzer, max_depth=max_depth,
                                       show_param_shapes=show_param_shapes)
    finally:
        model.train(was_training)
    return dict(flops=int(flops), params=int(parameter_count(model)['']), table=table,
                flops_by_operator=dict(analyzer.by_operator()),
                unsupported_ops=dict(analyzer.unsupported_ops()))
