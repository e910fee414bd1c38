"""Public neighbourhood-attention ops ``na1d``/``na2d``/``na3d``: argument checking and backend choice.

Every backend name is one implementation (one module of :mod:`.backends`, or an optional package):

============  ==================================================================================
backend       implementation
============  ==================================================================================
reference     explicit neighbour gather (:mod:`.backends.reference`): the oracle; any device
unrolled      per-window-offset gathers in standard ops (:mod:`.backends.unrolled`): export / ONNX
native        the compiled C++ CPU kernel (:mod:`.backends.native`, ``native.cpp``); CPU only,
              no dropout, needs a C++ compiler
tiles         pure-torch query tiles against key halos (:mod:`.backends.tiles`); any device
flex          torch FlexAttention (:mod:`.backends.flex`); CUDA (CPU: eager forward only), no dropout
natten        the optional NATTEN package; no rpb, valid_size or dropout
triton        Triton kernels (:mod:`.backends.triton`); CUDA with triton; opt-in (``TRITON_ON_CUDA``)
============  ==================================================================================

:func:`resolve_backend` is the single place that decides which one runs. ``backend='auto'`` takes
the first row of this table that matches the call:

==========  =========  ==================  =======  ==================================================
context     device     dtype               dropout  backend
==========  =========  ==================  =======  ==================================================
export      any        any                 any      ``unrolled`` (``torch.export``, ONNX, ``torch.jit.trace``)
compile     CPU        any                 0        ``native``; ``reference`` without the kernel
compile     CPU        any                 > 0      ``reference``
compile     not CPU    fp16 / bf16 / fp32  0        ``triton`` where it takes CUDA calls (below); else ``flex``
compile     not CPU    fp64, or dropout    any      ``reference``
eager       CPU        any                 0        ``native``; ``tiles`` without the kernel
eager       CPU        any                 > 0      ``tiles``
eager       CUDA       fp16 / bf16 / fp32  0        ``natten`` when installed and the call has no rpb /
                                                    valid_size; else ``triton`` where it takes CUDA
                                                    calls; else ``flex``
eager       CUDA       fp64, or dropout    any      ``tiles``
eager       other      any                 any      ``tiles``
==========  =========  ==================  =======  ==================================================

"``triton`` takes CUDA calls": :data:`TRITON_ON_CUDA` is set, triton is installed and its kernels
cover the call (1-D to 3-D, stride 1, not causal). :data:`TRITON_ON_CUDA` stays ``False`` (``triton``
opt-in) until ``tools/analysis_tools/gpu_check.py`` has passed on a GPU and the change recording that
report sets it.

(``compile``: under ``torch.compile``, where the ``tiles`` autograd Function does not trace; the
``native`` and ``triton`` kernels are custom ops, traced without graph breaks. "without the kernel":
no C++ compiler, a failed build, which :mod:`.backends.native` reports once with a ``RuntimeWarning``,
or ``LOCALATTN_NA_NATIVE=0``.)

A backend requested by name runs exactly that implementation. When it cannot run the call (``native``
on CUDA, without a compiler or with dropout; ``flex`` or ``triton`` with dropout; ``natten`` not
installed or with rpb; ``triton`` without CUDA or triton...) the call raises ``ValueError`` (the
arguments rule it out) or ``RuntimeError`` (the environment does), naming the backend, the reason and
the backends that can run it. ``'tiled'``, the former name of native-else-tiles, is refused with a
message naming its two successors.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Sequence, Union

import torch
from torch import Tensor

from .backends import native
from .backends import triton as triton_backend
from .backends.reference import na_reference
from .backends.tiles import na_tiles
from .backends.unrolled import na_unrolled
from .indexing import AxisSpec

#: Whether ``backend='auto'`` gives CUDA calls to the fused ``triton`` kernels (see the table above).
TRITON_ON_CUDA = False
BACKENDS = ('auto', 'reference', 'unrolled', 'native', 'tiles', 'flex', 'natten', 'triton')
#: Former names ``{old: what to use instead}``, still accepted with a ``DeprecationWarning``.
#: Former backend names and what replaced them (refused with this text: a name must mean one implementation).
RENAMED_BACKENDS = {'tiled': "'native' (the compiled CPU kernel) or 'tiles' (pure-torch tiles)"}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IntArg = Union[int, Sequence[int]]
BoolArg = Union[bool, Sequence[bool]]


def _per_axis(name: str, value, n: int, kind: type) -> tuple:
    """Broadcast an int/bool (or check a length-``n`` sequence) to a per-axis tuple."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(values) != n or not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
                                   for v in values):
        raise ValueError(f'{name} must be a {kind.__name__} or a sequence of {n} {kind.__name__}s, '
                         f'got {value!r}')
    return values


def _check_tensors(n: int, query: Tensor, key: Tensor, value: Tensor) -> None:
    layout = '[B, ' + ', '.join('XYZ'[:n]) + ', heads, head_dim]'
    for name, x in (('query', query), ('key', key), ('value', value)):
        if not isinstance(x, Tensor):
            raise ValueError(f'{name} must be a Tensor, got {type(x).__name__}')
        if x.dim() != n + 3:
            raise ValueError(f'{name} must have {n + 3} dims {layout} for na{n}d, got shape {tuple(x.shape)}')
        if x.dtype not in DTYPES:
            raise ValueError(f'{name} dtype must be one of {DTYPES}, got {x.dtype}')
    for name, x in (('key', key), ('value', value)):
        if x.shape != query.shape:
            raise ValueError(f'{name} shape {tuple(x.shape)} must equal query shape {tuple(query.shape)}')
        if x.dtype != query.dtype:
            raise ValueError(f'{name} dtype {x.dtype} must equal query dtype {query.dtype}')
        if x.device != query.device:
            raise ValueError(f'{name} device {x.device} must equal query device {query.device}')
    if query.shape[-1] < 1 or query.shape[-2] < 1:
        raise ValueError(f'heads and head_dim must be positive, got shape {tuple(query.shape)}')


def _axes(n: int, query: Tensor, kernel_size: IntArg, dilation: IntArg, stride: IntArg,
          is_causal: BoolArg, valid_size: IntArg | None) -> tuple[AxisSpec, ...]:
    kernel = _per_axis('kernel_size', kernel_size, n, int)
    dil = _per_axis('dilation', dilation, n, int)
    step = _per_axis('stride', stride, n, int)
    causal = _per_axis('is_causal', is_causal, n, bool)
    sizes = tuple(query.shape[1:n + 1])
    valid = sizes if valid_size is None else _per_axis('valid_size', valid_size, n, int)
    for name, vals in (('kernel_size', kernel), ('dilation', dil), ('stride', step)):
        if min(vals) < 1:
            raise ValueError(f'{name} must be positive, got {vals}')
    for a in range(n):
        if kernel[a] * dil[a] > sizes[a]:
            message = (f'kernel_size * dilation ({kernel[a]} * {dil[a]} = {kernel[a] * dil[a]}) '
                       f'must be <= the size of axis {a + 1} ({sizes[a]})')
            heads = query.shape[n + 1]
            if heads >= kernel[a] * dil[a] and heads > sizes[a]:  # the "heads" axis is the long one
                dims = ', '.join('XYZ'[:n])
                order = ', '.join(str(i) for i in (0, *range(2, n + 2), 1, n + 2))
                message += (f' of query shape {tuple(query.shape)}. na{n}d expects channels-last '
                            f'[B, {dims}, heads, head_dim]; this shape looks heads-first '
                            f'[B, heads, {dims}, head_dim]: pass query.permute({order}) (and the same '
                            'for key and value)')
            raise ValueError(message)
        if step[a] > kernel[a]:
            raise ValueError(f'stride ({step[a]}) must be <= kernel_size ({kernel[a]}) on axis {a + 1}')
        if not 1 <= valid[a] <= sizes[a]:
            raise ValueError(f'valid_size ({valid[a]}) must be in [1, {sizes[a]}] on axis {a + 1}')
    return tuple(AxisSpec(sizes[a], kernel[a], dil[a], step[a], causal[a],
                          None if valid[a] == sizes[a] else valid[a]) for a in range(n))


def _check_rpb(rpb: Tensor | None, query: Tensor, axes: tuple[AxisSpec, ...]) -> None:
    if rpb is None:
        return
    shape = (query.shape[-2], *(2 * ax.kernel - 1 for ax in axes))
    if not isinstance(rpb, Tensor) or tuple(rpb.shape) != shape:
        got = tuple(rpb.shape) if isinstance(rpb, Tensor) else type(rpb).__name__
        raise ValueError(f'rpb must have shape [heads, 2k-1, ...] = {shape}, got {got}')
    if not rpb.is_floating_point() or rpb.device != query.device:
        raise ValueError(f'rpb must be a floating tensor on {query.device}, got {rpb.dtype} on {rpb.device}')
    if any(ax.stride > 1 for ax in axes):
        raise ValueError(f'rpb requires stride 1 on every axis, got stride {tuple(ax.stride for ax in axes)}')


def _constant_under_compile(fn):
    """Let torch.compile treat ``fn()`` as a constant (no tracing into its file-system checks).

    What ``torch.compiler.assume_constant_result`` does, without importing dynamo (about a second) at
    ``import localattn``.
    """
    fn._dynamo_marked_constant = True
    return fn


@functools.lru_cache(maxsize=None)
def _module_exists(name: str) -> bool:
    """``importlib.util.find_spec`` once per name: it searches the file system (~1 ms a call)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


@_constant_under_compile
def natten_available() -> bool:
    """Whether the optional ``natten`` package is importable."""
    return _module_exists('natten')


@_constant_under_compile
def native_available() -> bool:
    """Whether the compiled CPU kernel of :mod:`.backends.native` is available (builds it on first call)."""
    return native.library() is not None


@_constant_under_compile
def flex_available() -> bool:
    """Whether this torch has FlexAttention (``torch.nn.attention.flex_attention``, torch >= 2.5)."""
    return _module_exists('torch.nn.attention.flex_attention')


@_constant_under_compile
def triton_available() -> bool:
    """Whether the ``triton`` backend can run here (triton, and CUDA or ``TRITON_INTERPRET=1``)."""
    return bool(triton_backend.available())


@_constant_under_compile
def _triton_interpreting() -> bool:
    """``TRITON_INTERPRET=1``: the triton kernels run on CPU tensors (the test suite's way)."""
    return triton_backend.interpreting()


def _natten(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...], scale: float) -> Tensor:
    import natten
    op = getattr(natten, f'na{len(axes)}d')
    return op(query, key, value, kernel_size=tuple(ax.kernel for ax in axes),
              stride=tuple(ax.stride for ax in axes), dilation=tuple(ax.dilation for ax in axes),
              is_causal=tuple(ax.causal for ax in axes), scale=scale)


def _obstacle(backend: str, query: Tensor, rpb: Tensor | None, axes: tuple[AxisSpec, ...],
              dropout_p: float) -> tuple[type[Exception], str] | None:
    """Why the named ``backend`` cannot run this call: ``(ValueError, reason)`` when the arguments rule
    it out, ``(RuntimeError, reason)`` when the environment does; ``None`` when it can run."""
    device = query.device.type
    if backend == 'native':
        if device != 'cpu':
            return ValueError, f'it is a CPU kernel and the inputs are on {query.device}'
        if dropout_p > 0:
            return ValueError, 'it does not support dropout_p > 0'
        if not native_available():
            return RuntimeError, f'the compiled kernel is unavailable ({native.unavailable_reason()})'
    elif backend == 'flex':
        if dropout_p > 0:
            return ValueError, 'FlexAttention does not support dropout_p > 0'
        if not flex_available():
            return RuntimeError, f'torch {torch.__version__} has no torch.nn.attention.flex_attention (torch >= 2.5)'
    elif backend == 'natten':
        if rpb is not None or dropout_p > 0 or any(ax.valid is not None for ax in axes):
            return ValueError, 'natten supports neither rpb, valid_size nor dropout_p > 0'
        if not natten_available():
            return RuntimeError, 'the natten package is not installed'
    elif backend == 'triton':
        if device != 'cuda' and not _triton_interpreting():
            return ValueError, f'it runs on CUDA (or under TRITON_INTERPRET=1) and the inputs are on {query.device}'
        if not triton_available():
            return RuntimeError, 'triton is not installed or no CUDA device is present'
        why = triton_backend.supports(axes, dropout_p)
        if why is not None:
            return ValueError, f'its kernels do not cover {why}'
    return None


def _triton_takes(device: str, axes: tuple[AxisSpec, ...]) -> bool:
    """Whether ``backend='auto'`` gives this (fp16 / bf16 / fp32, dropout-free) call to ``triton``."""
    return (TRITON_ON_CUDA and device == 'cuda' and triton_available()
            and triton_backend.supports(axes) is None)


def resolve_backend(backend: str, query: Tensor, rpb: Tensor | None, axes: tuple[AxisSpec, ...],
                    dropout_p: float) -> str:
    """The backend that runs this call: ``backend`` itself when it can, the module docstring's table
    for ``'auto'``. The only place that chooses an implementation.

    Raises:
        ValueError: ``backend`` is unknown, or the call's arguments rule it out.
        RuntimeError: the environment rules it out (no compiler, package not installed, no CUDA...).
    """
    if backend in RENAMED_BACKENDS:
        raise ValueError(f'backend={backend!r} was split into {RENAMED_BACKENDS[backend]}; '
                         f'choose one of {BACKENDS}')
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'auto':
        device, wide = query.device.type, query.dtype == torch.float64
        if torch.compiler.is_exporting() or torch.jit.is_tracing():  # export / ONNX / jit.trace: plain ops
            return 'unrolled'
        if torch.compiler.is_compiling():  # the tiles autograd Function does not trace: custom op or reference
            if device == 'cpu':
                return 'native' if dropout_p == 0 and native_available() else 'reference'
            if dropout_p > 0 or wide:
                return 'reference'
            return 'triton' if _triton_takes(device, axes) else 'flex'
        if device == 'cpu':
            return 'native' if dropout_p == 0 and native_available() else 'tiles'
        if device != 'cuda' or dropout_p > 0 or wide:
            return 'tiles'
        plain = rpb is None and all(ax.valid is None for ax in axes)
        if plain and natten_available():
            return 'natten'
        return 'triton' if _triton_takes(device, axes) else 'flex'
    obstacle = _obstacle(backend, query, rpb, axes, dropout_p)
    if obstacle is None:
        return backend
    error, reason = obstacle
    usable = [name for name in BACKENDS[1:] if _obstacle(name, query, rpb, axes, dropout_p) is None]
    auto = resolve_backend('auto', query, rpb, axes, dropout_p)
    raise error(f'backend={backend!r} cannot run this call: {reason}. Backends that can: '
                f'{", ".join(map(repr, usable))} (backend="auto" picks {auto!r}).')


def _na(n: int, query: Tensor, key: Tensor, value: Tensor, kernel_size: IntArg, dilation: IntArg,
        stride: IntArg, is_causal: BoolArg, rpb: Tensor | None, scale: float | None,
        valid_size: IntArg | None, dropout_p: float, backend: str) -> Tensor:
    """Check the arguments of an n-D NA call and run it on the selected backend."""
    _check_tensors(n, query, key, value)
    axes = _axes(n, query, kernel_size, dilation, stride, is_causal, valid_size)
    _check_rpb(rpb, query, axes)
    if not 0 <= dropout_p < 1:
        raise ValueError(f'dropout_p must be in [0, 1), got {dropout_p}')
    scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
    backend = resolve_backend(backend, query, rpb, axes, dropout_p)
    if query.shape[0] == 0:
        return torch.empty_like(query)
    if backend == 'reference':
        return na_reference(query, key, value, axes, rpb, scale, dropout_p)
    if backend == 'unrolled':
        return na_unrolled(query, key, value, axes, rpb, scale, dropout_p)
    if backend == 'native':
        return native.na_native(query, key, value, axes, rpb, scale)
    if backend == 'tiles':
        return na_tiles(query, key, value, axes, rpb, scale, dropout_p)
    if backend == 'flex':
        from .backends.flex import na_flex
        return na_flex(query, key, value, axes, rpb, scale)
    if backend == 'triton':
        return triton_backend.na_triton(query, key, value, axes, rpb, scale)
    return _natten(query, key, value, axes, scale)


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntArg, *, dilation: IntArg = 1,
         stride: IntArg = 1, is_causal: BoolArg = False, rpb: Tensor | None = None,
         scale: float | None = None, valid_size: IntArg | None = None, dropout_p: float = 0.0,
         backend: str = 'auto') -> Tensor:
    """1-D neighbourhood attention on ``[B, L, heads, head_dim]``; ``rpb``: ``[heads, 2k - 1]``.

    See :func:`na2d` for the semantics of every argument.
    """
    return _na(1, query, key, value, kernel_size, dilation, stride, is_causal, rpb, scale, valid_size,
               dropout_p, backend)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntArg, *, dilation: IntArg = 1,
         stride: IntArg = 1, is_causal: BoolArg = False, rpb: Tensor | None = None,
         scale: float | None = None, valid_size: IntArg | None = None, dropout_p: float = 0.0,
         backend: str = 'auto') -> Tensor:
    """2-D neighbourhood attention (NATTEN semantics).

    Along every axis (length ``L``) a query attends to ``kernel_size`` keys of its dilation group,
    in a window centred on it and shifted inside the map at borders; queries in blocks of ``stride``
    share the window of the block leader; ``is_causal`` axes see only keys at or before the query.
    The neighbour set in 2-D is the product of the per-axis windows; the exact per-axis rule is in
    :mod:`localattn.ops.na.indexing`.

    Args:
        query, key, value: ``[B, H, W, heads, head_dim]``, same shape, dtype (fp16/bf16/fp32/fp64)
            and device.
        kernel_size: window size ``k`` (int or per-axis tuple), ``k * dilation <= axis size``.
        dilation: dilation ``d`` (int or per-axis tuple).
        stride: query stride ``1 <= s <= k`` (int or per-axis tuple).
        is_causal: causal masking (bool or per-axis tuple).
        rpb: optional relative positional bias ``[heads, 2k_H - 1, 2k_W - 1]``; the key at relative
            offset ``(dy, dx)`` (in dilated steps) gets ``rpb[h, dy + k_H - 1, dx + k_W - 1]``, added
            to the scaled logit. Stride 1 only. On a causal axis the offsets are ``<= 0``.
        scale: logit scale, default ``head_dim ** -0.5``.
        valid_size: optional per-axis number of leading positions that may be attended as keys
            (for padded maps). Windows are still computed on the full (padded)
            size; keys at or beyond ``valid_size`` are removed from them. Queries left without any
            key output zeros.
        dropout_p: dropout probability applied to the attention weights (not on ``native``,
            ``flex``, ``natten``).
        backend: ``'auto'`` (CPU: ``'native'``, else ``'tiles'``; CUDA: ``'natten'`` when installed
            and applicable, else ``'flex'``, ``'tiles'`` for fp64 and dropout; ``'unrolled'`` under
            torch.export / ONNX export; the full table is in :mod:`localattn.ops.na.functional`),
            or one implementation by name: ``'reference'`` (explicit gather), ``'unrolled'``
            (per-offset gathers in standard ops), ``'native'`` (the compiled CPU kernel),
            ``'tiles'`` (pure-torch tiles, any device), ``'flex'`` (FlexAttention), ``'natten'``,
            ``'triton'``. A named backend that cannot run the call raises, naming those that can.

    Returns:
        ``[B, H, W, heads, head_dim]``, dtype of ``query``.
    """
    return _na(2, query, key, value, kernel_size, dilation, stride, is_causal, rpb, scale, valid_size,
               dropout_p, backend)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntArg, *, dilation: IntArg = 1,
         stride: IntArg = 1, is_causal: BoolArg = False, rpb: Tensor | None = None,
         scale: float | None = None, valid_size: IntArg | None = None, dropout_p: float = 0.0,
         backend: str = 'auto') -> Tensor:
    """3-D neighbourhood attention on ``[B, X, Y, Z, heads, head_dim]``; ``rpb``: ``[heads, 2k-1, 2k-1, 2k-1]``.

    See :func:`na2d` for the semantics of every argument.
    """
    return _na(3, query, key, value, kernel_size, dilation, stride, is_causal, rpb, scale, valid_size,
               dropout_p, backend)
