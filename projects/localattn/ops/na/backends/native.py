"""The ``native`` backend: the compiled CPU kernel of :file:`native.cpp`, exact per-query neighbour loops.

The loops visit exactly ``prod(k)`` keys per query (the pure-torch ``tiles`` backend computes
``prod(T + k - 1)`` scores per query), so on CPU this is the fast path and what ``backend='auto'``
picks there (see :func:`..functional.resolve_backend`). Each window row of keys is contiguous along
the last axis (dilation groups are made contiguous there first), so scores are computed ``8`` keys at
a time from a transposed copy of K (``[B, heads, C, N]``), in vector registers.

It needs nothing but a C++ compiler: :file:`native.cpp` (shipped as package data next to this file)
is built once with ``$CXX`` (else ``g++``/``c++``) and ``-O3 -march=native``, cached under
``$LOCALATTN_CACHE_DIR`` (default ``~/.cache/localattn``) keyed by a hash of source, compiler, flags
and CPU, and loaded with ``ctypes`` (no torch headers, builds in seconds). When it cannot be built (no
compiler, compiler error) :func:`library` returns ``None`` and warns once (:class:`RuntimeWarning`,
with the compiler's reason); ``auto`` then runs the ``tiles`` backend, :data:`FALLBACK_SLOWDOWN` slower.
``LOCALATTN_NA_NATIVE=0`` disables the kernel without building or warning.

The kernels are the custom ops ``localattn::na_cpu_forward`` / ``na_cpu_backward`` (``torch.library``,
with fake implementations and autograd), so ``torch.compile`` keeps them whole. The forward reads q and
v with their strides (slices of a fused qkv projection are not copied) and, when a gradient is needed,
saves the log-sum-exp and the ``prod(k)`` neighbour probabilities per (query, head) (scalars, no
copies of K/V); backward computes ``dP = dO . V`` per query, then ``dq`` and the RPB gradient, and
scatters ``dk``/``dv`` when every thread owns whole (batch, head) slices; otherwise ``dk``/``dv`` come
from a second pass per key over the queries whose window holds it (probabilities recomputed from the
log-sum-exp). No races, no atomics. fp16/bf16 run in fp32 (inputs upcast), fp64 in fp64.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ...caching import table_cache
from ..indexing import AxisSpec, axis_inverse, axis_windows, pack_axes, unpack_axes

PAD = 8  # zero columns after each transposed row (one vector step)
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-shared', '-fPIC', '-std=c++17', '-pthread')
SOURCE_FILE = Path(__file__).with_name('native.cpp')
#: How much slower the ``tiles`` fallback is than this kernel: na2d forward + backward, best of 15,
#: 1-2 threads of a shared 2-core x86 CPU; the ratio ranged 1.4x-2.3x over six runs (median 1.9x).
FALLBACK_SLOWDOWN = ('about 2x slower (na2d forward + backward, batch 2, 56x56, kernel 7, 4 heads, head_dim 32, '
                     'RPB, fp32)')
_STDERR_TAIL = 2000  # characters of the compiler's stderr quoted in the warning

_unavailable: list[str] = []  # why library() returned None (filled on its first call)


def _cpu_id() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return next((line for line in f if line.startswith('flags')), platform.processor())
    except OSError:
        return platform.processor()


def _outside_stacklevel() -> int:
    """``stacklevel`` for a warning raised by :func:`_give_up`: the first frame outside localattn."""
    package = str(Path(__file__).resolve().parents[3])
    frame, level = sys._getframe(1), 1  # level 1: the frame of _give_up
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _give_up(reason: str, warn: bool = True) -> None:
    """Record why the kernel is unavailable and (once: :func:`library` is cached) say so loudly."""
    _unavailable.append(reason)
    if warn:
        warnings.warn(
            f'localattn: the compiled CPU kernel of neighbourhood attention (backend "native") is '
            f'unavailable: {reason}\nbackend="auto" falls back to the pure-torch "tiles" backend on CPU, '
            f'{FALLBACK_SLOWDOWN}. Install a C++17 compiler (or point $CXX at one) and restart; '
            f'LOCALATTN_NA_NATIVE=0 disables the kernel without this warning.', RuntimeWarning,
            stacklevel=_outside_stacklevel())


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used (``None`` when :func:`library` loaded it)."""
    if library() is not None:
        return None
    return _unavailable[-1] if _unavailable else 'disabled'


def _build(compiler: list[str], target: Path) -> None:
    """Compile :data:`SOURCE_FILE` to ``target`` (atomically: concurrent builders are harmless)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / 'na_cpu.so'
        subprocess.run([*compiler, *FLAGS, str(SOURCE_FILE), '-o', str(out)], check=True, capture_output=True,
                       text=True, timeout=600)
        os.replace(out, target)


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first use), or ``None`` when unavailable or disabled."""
    if os.environ.get('LOCALATTN_NA_NATIVE', '1') == '0':
        _give_up('disabled by LOCALATTN_NA_NATIVE=0', warn=False)
        return None
    try:
        source = SOURCE_FILE.read_text(encoding='utf-8')
    except OSError as err:
        _give_up(f'its source {SOURCE_FILE} cannot be read ({err}); reinstall localattn')
        return None
    compiler = shlex.split(os.environ.get('CXX', '')) or [shutil.which('g++') or shutil.which('c++') or '']
    if not compiler[0]:
        _give_up('no C++ compiler found ($CXX is unset and neither g++ nor c++ is on PATH)')
        return None
    key = '\0'.join([source, *compiler, *FLAGS, _cpu_id()])
    target = Path(os.environ.get('LOCALATTN_CACHE_DIR', Path.home() / '.cache' / 'localattn'))
    target = target / f'na_cpu_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so'
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except subprocess.CalledProcessError as err:
        output = (err.stderr or '').strip() or (err.stdout or '').strip() or '(no output)'
        _give_up(f'building {SOURCE_FILE.name} with {shlex.join(compiler)} failed (exit status '
                 f'{err.returncode}):\n{output[-_STDERR_TAIL:]}')
        return None
    except (OSError, subprocess.SubprocessError) as err:
        _give_up(f'building or loading {target} failed ({type(err).__name__}: {err})')
        return None
    ptr, i32, f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for suffix in ('f32', 'f64'):
        getattr(lib, f'na_forward_{suffix}').argtypes = [ptr] * 6 + [f64] + [ptr] * 3 + [i32]
        getattr(lib, f'na_backward_{suffix}').argtypes = [ptr] * 9 + [f64] + [ptr] * 9 + [i32]
    return lib


def _library() -> ctypes.CDLL:
    """:func:`library`, or a ``RuntimeError`` saying why it is unavailable."""
    lib = library()
    if lib is None:
        raise RuntimeError(f'localattn: the native NA kernel is unavailable: {unavailable_reason()}')
    return lib


class _Plan(NamedTuple):
    meta: tuple[int, ...]  # L[3], d[3], K[3], Lmax, max neighbours of the axes padded to 3-D
    tab: Tensor  # [3, 5, Lmax] int64 window / inverse-window tables
    perm: Tensor | None  # new -> old position along the last axis (dilation groups made contiguous)
    inverse: Tensor | None  # old -> new position


@table_cache(maxsize=64)
def _plan(axes: tuple[AxisSpec, ...]) -> _Plan:
    """Kernel tables of ``axes`` padded to 3-D; the last axis is reordered group-major when dilated."""
    axes = (AxisSpec(1, 1),) * (3 - len(axes)) + axes
    lmax = max(ax.length for ax in axes)
    tab = torch.zeros(3, 5, lmax, dtype=torch.long)
    for a, ax in enumerate(axes):
        win = axis_windows(ax)
        tab[a, :, :ax.length] = torch.stack([win.first, win.count, win.rel, *axis_inverse(ax)])
    last = axes[2]
    perm = inverse = None
    if last.dilation > 1:
        perm = torch.cat([torch.arange(g, last.length, last.dilation) for g in range(last.dilation)])
        inverse = torch.argsort(perm)
        fields = tab[2, :, :last.length][:, perm]
        fields[0], fields[3] = inverse[fields[0]], inverse[fields[3]]
        tab[2, :, :last.length] = fields
    most = max(math.prod(int(tab[a, f].max()) for a in range(3)) for f in (1, 4))  # neighbours per position
    meta = (*(ax.length for ax in axes), axes[0].dilation, axes[1].dilation, 1, *(ax.kernel for ax in axes), lmax,
            most)
    return _Plan(meta, tab, perm, inverse)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(x: Tensor, perm: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[B, *spatial, H, C]`` -> contiguous ``[B, N, H, C]`` in ``dtype``, last axis reordered by ``perm``."""
    if perm is not None:
        x = x.index_select(x.dim() - 3, perm)
    return x.to(dtype).contiguous().view(x.shape[0], -1, *x.shape[-2:])


def _strided_rows(x: Tensor, perm: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Like :func:`_rows` but without a copy when ``x`` already is ``[B, N, H, C]`` rows with contiguous
    channels in ``dtype`` (e.g. ``q``/``v`` sliced out of a fused qkv projection); strides are free."""
    if perm is None and x.dtype == dtype:
        rows = x.reshape(x.shape[0], -1, *x.shape[-2:])
        if rows.stride(-1) == 1:
            return rows
    return _rows(x, perm, dtype)


def _columns(rows: Tensor) -> Tensor:
    """``[B, N, H, C]`` (any strides) -> ``[B, H, C, N + PAD]``; the zero tail lets vector steps read past a
    row end."""
    b, n, h, c = rows.shape
    cols = rows.new_empty(b, h, c, n + PAD)
    cols[..., n:] = 0
    cols[..., :n] = rows.permute(0, 2, 3, 1)
    return cols


def _unrows(rows: Tensor, shape: torch.Size, dtype: torch.dtype, inverse: Tensor | None) -> Tensor:
    """Inverse of :func:`_rows`: ``[B, N, H, C]`` (any strides) -> ``shape`` ``[B, *spatial, H, C]`` in ``dtype``."""
    x = rows.reshape(shape)
    if inverse is not None:
        x = x.index_select(x.dim() - 3, inverse)
    return x.to(dtype)


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _meta(rows: Tensor, plan: _Plan, q: Tensor | None = None, v: Tensor | None = None) -> Tensor:
    """Kernel geometry of ``[B, N, H, C]`` rows; ``q``/``v``: the forward's (strided) row views."""
    b, n, h, c = rows.shape
    strides = [x.stride()[:3] if x is not None else (n * h * c, h * c, c) for x in (q, v)]
    return torch.tensor((b * h, h, n, n + PAD, c, *plan.meta, *strides[0], *strides[1]), dtype=torch.long)


# The kernels are registered as custom ops: opaque to torch.compile (no graph break, shapes from the
# fake implementations) and differentiable through ``register_autograd``.
@torch.library.custom_op('localattn::na_cpu_forward', mutates_args=(), device_types='cpu')
def na_cpu_forward(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, geom: list[int], scale: float,
                   with_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Forward kernel. ``[B, *spatial, H, C]`` x3 -> ``(out, lse [B, N, H], probs [B, H, N, prod(k)])``.

    ``lse``/``probs`` (compute dtype) are the backward's statistics; empty without ``with_stats``.
    """
    dtype, plan = _compute_dtype(query), _plan(unpack_axes(geom))
    q, v = (_strided_rows(x, plan.perm, dtype) for x in (query, value))
    kt = _columns(_strided_rows(key, plan.perm, dtype))
    bias = None if rpb is None else rpb.detach().to(dtype).contiguous()
    b, n, h, c = q.shape
    out = q.new_empty(b, n, h, c)
    lse = q.new_empty((b, n, h) if with_stats else (0, ))
    probs = q.new_empty((b, h, n, math.prod(plan.meta[6:9])) if with_stats else (0, ))
    meta = _meta(q, plan, q, v)  # every array passed below must stay referenced during the call
    lib = _library()
    fn = lib.na_forward_f64 if dtype == torch.float64 else lib.na_forward_f32
    fn(_ptr(meta), _ptr(plan.tab), _ptr(q), _ptr(kt), _ptr(v), _ptr(bias), scale, _ptr(out),
       _ptr(lse) if with_stats else None, _ptr(probs) if with_stats else None, torch.get_num_threads())
    return _unrows(out, query.shape, query.dtype, plan.inverse), lse, probs


@na_cpu_forward.register_fake
def _(query, key, value, rpb, geom, scale, with_stats):
    dtype, axes = _compute_dtype(query), unpack_axes(geom)
    b, h = query.shape[0], query.shape[-2]
    n = math.prod(ax.length for ax in axes)
    if not with_stats:
        return torch.empty_like(query), query.new_empty(0, dtype=dtype), query.new_empty(0, dtype=dtype)
    return (torch.empty_like(query), query.new_empty(b, n, h, dtype=dtype),
            query.new_empty(b, h, n, math.prod(ax.kernel for ax in axes), dtype=dtype))


@torch.library.custom_op('localattn::na_cpu_backward', mutates_args=(), device_types='cpu')
def na_cpu_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, out: Tensor,
                    lse: Tensor, probs: Tensor, geom: list[int], scale: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward kernel: ``(dq, dk, dv, drpb)``; ``drpb`` is empty when ``rpb`` is None."""
    if probs.numel() == 0 and lse.numel() == 0 and grad_out.numel():
        raise RuntimeError('localattn: NA backward without the forward statistics (forward ran without grad)')
    dtype, plan, threads = _compute_dtype(query), _plan(unpack_axes(geom)), torch.get_num_threads()
    q, k, v, grad, o = (_rows(x, plan.perm, dtype) for x in (query, key, value, grad_out, out))
    delta = (grad * o).sum(-1)
    bias = None if rpb is None else rpb.detach().to(dtype).contiguous()
    dq = torch.empty_like(q)
    d_bias = None if bias is None else torch.empty_like(bias)
    if q.shape[0] * q.shape[2] >= threads:  # threads own whole (batch, head) slices: scatter dk, dv
        qt = gt = None
        dk, dv = torch.zeros_like(q), torch.zeros_like(q)
    else:  # a second pass per key over the queries whose window holds it
        qt, gt = _columns(q), _columns(grad)
        dk, dv = torch.empty_like(q), torch.empty_like(q)
    kt, vt = _columns(k), _columns(v)  # the kernel reads every array below while these references keep them alive
    meta = _meta(q, plan)
    lib = _library()
    fn = lib.na_backward_f64 if dtype == torch.float64 else lib.na_backward_f32
    fn(_ptr(meta), _ptr(plan.tab), _ptr(q), _ptr(qt), _ptr(k), _ptr(kt), _ptr(v), _ptr(vt), _ptr(bias),
       scale, _ptr(lse), _ptr(probs), _ptr(grad), _ptr(gt), _ptr(delta), _ptr(dq), _ptr(dk), _ptr(dv),
       _ptr(d_bias), threads)
    grads = (_unrows(x, query.shape, query.dtype, plan.inverse) for x in (dq, dk, dv))
    return (*grads, query.new_empty(0) if d_bias is None else d_bias.to(rpb.dtype))


@na_cpu_backward.register_fake
def _(grad_out, query, key, value, rpb, out, lse, probs, geom, scale):
    return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value),
            query.new_empty(0) if rpb is None else torch.empty_like(rpb))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, rpb, geom, scale, _ = inputs
    out, lse, probs = output
    ctx.save_for_backward(query, key, value, rpb, out, lse, probs)
    ctx.geom, ctx.scale = geom, scale


def _backward(ctx, grad_out: Tensor, _grad_lse, _grad_probs):
    query, key, value, rpb, out, lse, probs = ctx.saved_tensors
    dq, dk, dv, d_rpb = na_cpu_backward(grad_out, query, key, value, rpb, out, lse, probs, ctx.geom, ctx.scale)
    return dq, dk, dv, (d_rpb if rpb is not None else None), None, None, None


na_cpu_forward.register_autograd(_backward, setup_context=_setup_context)


def na_native(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...], rpb: Tensor | None,
              scale: float) -> Tensor:
    """Neighbourhood attention with the compiled CPU kernel (raises ``RuntimeError`` without :func:`library`).

    Args:
        query, key, value: ``[B, *spatial, heads, head_dim]`` CPU tensors.
        axes: one :class:`AxisSpec` per spatial axis.
        rpb: ``[heads, 2k_1 - 1, ..., 2k_n - 1]`` or ``None``.
        scale: logit scale.

    Returns:
        ``[B, *spatial, heads, head_dim]``; queries without any valid key get zeros.
    """
    with_stats = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                                 for x in (query, key, value, rpb))
    return na_cpu_forward(query, key, value, rpb, pack_axes(axes), float(scale), with_stats)[0]
