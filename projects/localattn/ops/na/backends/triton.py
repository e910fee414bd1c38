"""Triton backend: fused neighbourhood attention with RPB, forward and backward, 1-D to 3-D, on CUDA.

One pass per direction, nothing of size ``tokens x k^2`` ever stored: the forward keeps an online
softmax over the exact window (statistics ``lse`` saved, fp32), the backward recomputes the
probabilities tile by tile (one kernel for dq and d(rpb), one for dk and dv; see
:mod:`._triton_kernels` for the tiling). Dilation is handled by addressing each dilation group as a
contiguous sub-map through strides, so dilated NA costs the same as NA on a map of the group's size.

Sizes, kernel sizes, dilations and the valid lengths are run-time arguments of the kernels (no
recompilation per input size); only the tile shapes (powers of two chosen from the kernel size and
the head dim) are compile-time. Supports fp32 (exact fp32 dots), fp16 and bf16 (fp32 accumulation),
any head dim, odd and non-square maps, ``valid_size``; stride > 1 and causal axes are not supported
(:func:`supports` says why; the dispatcher then names the backends that can run).

``TRITON_INTERPRET=1`` (set before this module's kernels are imported) runs the same kernels on CPU
tensors with Triton's interpreter: that is how the test suite checks them without a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import NamedTuple

import torch
from torch import Tensor

from ..indexing import AxisSpec, pack_axes, unpack_axes

LOG2E = 1.4426950408889634  # log2(e): the kernels work in base 2
#: names of the kernels (in :mod:`._triton_kernels`): forward, dq + d(rpb), dk + dv
KERNELS = ('na_fwd_kernel', 'na_bwd_dq_kernel', 'na_bwd_dkdv_kernel')


def interpreting() -> bool:
    """``TRITON_INTERPRET=1``: the kernels run on CPU tensors through Triton's interpreter."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


@functools.lru_cache(maxsize=1)
def _installed() -> tuple[bool, bool]:
    """``(triton importable, CUDA present)``, looked up once (a file-system search per call cost ~1 ms)."""
    return importlib.util.find_spec('triton') is not None, torch.cuda.is_available()


def available() -> bool:
    """Whether the kernels can run here: triton importable and a CUDA device (or the interpreter)."""
    has_triton, has_cuda = _installed()
    return has_triton and (has_cuda or interpreting())


def supports(axes: tuple[AxisSpec, ...], dropout_p: float = 0.0) -> str | None:
    """``None`` when the kernels cover this call, else the reason they do not."""
    if len(axes) not in (1, 2, 3):
        return f'{len(axes)}-D NA (1-D, 2-D and 3-D only)'
    if any(ax.stride != 1 for ax in axes):
        return 'stride > 1'
    if any(ax.causal for ax in axes):
        return 'causal axes'
    if dropout_p > 0:
        return 'dropout_p > 0'
    return None


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class Tiling(NamedTuple):
    """Compile-time tile shapes of one call (all powers of two)."""

    tqh: int  # query tile rows (forward, dq)
    tqw: int  # query tile columns
    krh: int  # key rows per step of the forward / dq kernels
    kw: int  # key columns per step (>= 2 kx - 1: also the RPB column bins)
    tkh: int  # key tile rows (dk/dv)
    tkw: int  # key tile columns
    qrh: int  # query rows per step of the dk/dv kernel
    qw: int  # query columns per step
    rpy: int  # RPB row bins (>= 2 ky - 1, and >= 16 where the dq kernel sums them with a dot)
    warps: int  # num_warps of the launches
    stages: int  # num_stages: software-pipelining depth of the inner loops
    maxnreg: int | None  # register cap per thread given to ptxas (None: ptxas's own choice, <= 255)


#: Launch settings of the kernels by head dim: entry ``bound -> settings`` serves head dims up to
#: ``bound`` (the largest bound serves larger ones too). ``tile``: rows x columns of the 2-D / 3-D
#: query tiles (forward, dq) and key tiles (dk/dv); a smaller tile has a smaller key box per query
#: (at k = 7: 8x8 computes 14 x 16 = 224 keys per query, 4.6x the 49 needed; 4x8 160, 3.3x; 2x8 128,
#: 2.6x) but loads each key for fewer queries. ``step_keys``: keys (queries, for dk/dv) per
#: inner-loop block of the 2-D kernels, ``KRH`` box rows of ``KW`` columns with ``KRH * KW`` at most
#: this (1: one box row per step); ``warps``, ``stages``, ``maxnreg``: Triton's ``num_warps`` /
#: ``num_stages`` / register cap (``None``: none). Chosen without a GPU from what the kernels compile
#: to for sm90 (``tools/analysis_tools/triton_resources.py``): no register spills, then the fewest
#: instructions per computed query-key pair (4 warps: ~30-48 per pair at head dims 32-64, 8 warps:
#: ~54-84; 4 warps spill at head dim 128). Smaller tiles with fewer warps (``4x8`` on 2 warps, ``2x8``
#: on 1) keep about those instructions per computed pair and compute fewer pairs: 27% / 37% fewer
#: loop instructions per needed pair at head dim 32 (same tool), but more key loads per query, which
#: only a GPU can weigh. ``gpu_check.py --sections triton_tuning`` times these alternatives on NAT-Tiny's
#: calls (head dim 32: the ``32`` entry, kept apart so that its choice does not reach larger head dims).
TUNING: dict[int, dict] = {
    32: {'tile': (8, 8), 'step_keys': 32, 'warps': 4, 'stages': 2, 'maxnreg': None},  # NAT / DiNAT: 32
    64: {'tile': (8, 8), 'step_keys': 32, 'warps': 4, 'stages': 2, 'maxnreg': None},
    128: {'tile': (8, 8), 'step_keys': 32, 'warps': 8, 'stages': 2, 'maxnreg': None},
}
#: tile shapes the kernels are built for: powers of two, 16 to 256 tokens (``tl.dot`` needs >= 16 rows)
TILE_SIDES = (1, 2, 4, 8, 16, 32)


def tuning_for(dim: int) -> dict:
    """The :data:`TUNING` entry (the dict itself) that serves head dim ``dim``."""
    bounds = sorted(TUNING)
    return TUNING[next((b for b in bounds if dim <= b), bounds[-1])]


def tiling(ky: int, kx: int, dim: int = 32, **settings) -> Tiling:
    """Tile shapes and launch settings for a (2-D view of the) call with kernel ``(ky, kx)``
    (``ky == 1`` for 1-D) and head dim ``dim``; ``settings`` override the :data:`TUNING` entry."""
    base = tuning_for(dim)
    unknown = set(settings) - set(base)
    if unknown:
        raise ValueError(f'tiling settings must be among {sorted(base)}, got {sorted(unknown)}')
    merged = {**base, **settings}
    if not isinstance(merged['tile'], tuple):  # tuples are checked once per value by the cached _tiling
        merged['tile'] = check_tile(merged['tile'])
    return _tiling(ky, kx, **merged)


def check_tile(tile) -> tuple[int, int]:
    """``tile`` as ``(rows, columns)``, or a ValueError saying what is allowed."""
    try:
        rows, cols = (int(x) for x in tile)
    except (TypeError, ValueError):
        raise ValueError(f'tile must be (rows, columns), got {tile!r}') from None
    if rows not in TILE_SIDES or cols not in TILE_SIDES or not 16 <= rows * cols <= 256:
        raise ValueError(f'tile must be (rows, columns) with each in {TILE_SIDES} and 16 <= rows x columns <= 256, '
                         f'got {tile!r}')
    return rows, cols


@functools.lru_cache(maxsize=256)
def _tiling(ky: int, kx: int, tile: tuple[int, int], step_keys: int, warps: int, stages: int,
            maxnreg: int | None) -> Tiling:
    tile = check_tile(tile)
    if ky == 1:  # 1-D: one row of 32 queries against the 32 + k - 1 keys it needs
        tqh, tqw, tkh, tkw = 1, 32, 1, 32
    else:  # 2-D (and each depth of 3-D): the tuning's tile for queries (forward, dq) and keys (dk/dv)
        tqh, tqw = tkh, tkw = tile
    kw = max(_pow2(tqw + kx - 1), _pow2(2 * kx - 1))
    qw = _pow2(tkw + kx - 1)
    # rows per block: as many as fill step_keys, but no more than a box can have (tile + k - 1)
    krh = max(1, min(step_keys // kw, _pow2(tqh + ky - 1) if ky > 1 else 1))
    qrh = max(1, min(step_keys // qw, _pow2(tkh + ky - 1) if ky > 1 else 1))
    rpy = _pow2(2 * ky - 1)
    if tqh * krh >= 16:  # the dq kernel bins RPB rows with a dot: both sides >= 16
        rpy = max(rpy, 16)
    return Tiling(tqh, tqw, krh, kw, tkh, tkw, qrh, qw, rpy, warps, stages, maxnreg)


def launch_options(t: Tiling) -> dict:
    """Triton launch / compile options of tiling ``t``."""
    opts = dict(num_warps=t.warps, num_stages=t.stages)
    if t.maxnreg is not None:
        opts['maxnreg'] = t.maxnreg
    return opts


def _as_3d(axes: tuple[AxisSpec, ...]) -> tuple[AxisSpec, AxisSpec, AxisSpec]:
    """The call's axes as ``(depth, rows, columns)``: 1-D and 2-D calls get unit leading axes."""
    unit = AxisSpec(1, 1)
    return (unit,) * (3 - len(axes)) + tuple(axes)


def computed_pairs(axes: tuple[AxisSpec, ...], dim: int = 32, **settings) -> int:
    """Query-key pairs the forward kernel computes (masked ones included), per batch and head.

    Counts, for every query tile of every dilation group, ``tile size x KW x`` (box rows, rounded up
    to blocks of ``KRH``) ``x`` (column steps) ``x kz`` (a tile is one depth; its depth window has
    ``kz`` key depths): what :func:`na_triton`'s forward (and its dq kernel) evaluates. Compare with
    ``prod(lengths) * prod(kernels)``, the pairs NA needs. ``settings`` override the :data:`TUNING`
    entry (see :func:`tiling`).
    """
    az, ay, ax = _as_3d(axes)
    t = tiling(ay.kernel, ax.kernel, dim, **settings)

    def spans(spec: AxisSpec, tile: int) -> list[int]:
        """Box extent (keys) of every tile of every dilation group along one axis."""
        out = []
        for g in range(spec.dilation):
            lg = -(-(spec.length - g) // spec.dilation)
            k = spec.kernel

            def start(i):
                return min(max(i - k // 2, 0), lg - k)
            for y0 in range(0, lg, tile):
                out.append(start(min(y0 + tile, lg) - 1) + k - start(y0))
        return out

    rows = sum(t.krh * -(-r // t.krh) for r in spans(ay, t.tqh))
    col_steps = sum(-(-c // t.kw) for c in spans(ax, t.tqw))
    return az.length * az.kernel * t.tqh * t.tqw * t.kw * rows * col_steps


def _geometry(axes, dim: int):
    az, ay, ax = _as_3d(axes)
    return az, ay, ax, tiling(ay.kernel, ax.kernel, dim)


def _strides(x: Tensor) -> tuple[int, ...]:
    """Strides of batch, depth, rows, columns, heads of a ``[B, Z, Y, X, heads, D]`` tensor."""
    return x.stride()[:5]


def _view_3d(x: Tensor, n: int) -> Tensor:
    """``[B, *spatial, h, D]`` with ``n`` spatial axes -> ``[B, Z, Y, X, h, D]`` (a view: unit axes in
    front). Last dim made contiguous."""
    for _ in range(3 - n):
        x = x.unsqueeze(1)
    return x if x.stride(-1) == 1 else x.contiguous()


#: CUDA's limit on the second and third grid dimensions (heads, batch)
_GRID_YZ = 65535


def _launch_args(az: AxisSpec, ay: AxisSpec, ax: AxisSpec, heads: int, tile_h: int,
                 tile_w: int) -> tuple[tuple, int]:
    """Run-time size arguments of the kernels and the number of tile programs (grid dim 0)."""
    lgz, lgy, lgx = (-(-a.length // a.dilation) for a in (az, ay, ax))
    tiles_y, tiles_x = -(-lgy // tile_h), -(-lgx // tile_w)
    sizes = (heads, az.length, ay.length, ax.length, az.kernel, ay.kernel, ax.kernel,
             az.dilation, ay.dilation, ax.dilation, az.valid_length, ay.valid_length, ax.valid_length,
             lgz, tiles_y, tiles_x)
    return sizes, az.dilation * ay.dilation * ax.dilation * lgz * tiles_y * tiles_x


def rpb_margin(t: Tiling, ky: int, kx: int) -> int:
    """Elements of zeros the RPB table needs on each side for the kernels' unmasked reads.

    The kernels read the table entry of every pair of a query tile and key block, inside the window
    or not (one unmasked gather per pair; the window mask discards the value afterwards), at
    ``(dy, dx) = (key row - query row + ky - 1, key column - query column + kx - 1)`` of a plane
    ``2 ky - 1`` rows of ``2 kx - 1``. Over a tile's key box (or a key tile's query box), rounded up to
    whole blocks, ``dy`` stays within ``[-(tile rows + block rows + ky), tile rows + block rows + 2 ky]``
    and ``dx`` likewise with columns, so this many elements before and after the table hold every
    read; depth planes are always read exactly. (``test_every_load_and_store_stays_inside_its_tensors``
    checks every address the kernels touch against their buffers.)
    """
    width = 2 * kx - 1
    rows = max(t.tqh, t.tkh) + max(t.krh, t.qrh) + 2 * ky
    cols = max(t.tqw, t.tkw) + max(t.kw, t.qw) + 2 * kx
    return -(-(rows * width + cols) // 4) * 4  # whole 16 bytes: the table's pointer stays aligned


def _bias_table(rpb: Tensor | None, device, margin: int) -> Tensor:
    """The RPB table as the kernels read it: fp32, contiguous, multiplied by log2(e) (they add it to
    base-2 logits), with ``margin`` zeros before and after it in memory (:func:`rpb_margin`; the
    returned view starts at the table); a 1-element placeholder without RPB."""
    if rpb is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    flat = torch.nn.functional.pad(rpb.detach().to(torch.float32).reshape(-1) * LOG2E, (margin, margin))
    return flat[margin:margin + rpb.numel()].view(rpb.shape)


def _kernels():
    from . import _triton_kernels
    if interpreting():
        _interpreter_runs_loops()
    return _triton_kernels


@functools.lru_cache(maxsize=1)
def _interpreter_runs_loops() -> None:
    """Raise if Triton's interpreter cannot run a loop with a run-time bound, as every kernel here does.

    Triton 3.6's interpreter turns a loop bound into an integer with ``int()`` of a 1-element array,
    which numpy 2.4 refuses (``TypeError: only 0-dimensional arrays can be converted to Python
    scalars``, raised from inside the first kernel); Triton 3.7 does not. A one-program probe, run once,
    turns that into an error that names the versions and the way out.
    """
    from . import _triton_kernels
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _triton_kernels.interpreter_probe_kernel[(1,)](out, 3)
    except Exception as e:  # noqa: BLE001 - any failure of the probe is reported the same way
        import numpy
        import triton
        raise RuntimeError(
            f'TRITON_INTERPRET=1: Triton {triton.__version__}\'s interpreter cannot run a loop with a run-time '
            f'bound under numpy {numpy.__version__} ({e.__cause__ or e!r}); the triton NA kernels need one. '
            'Use triton>=3.7, or numpy<2.4 with triton 3.6.') from e
    if out.item() != 3:
        raise RuntimeError(f'TRITON_INTERPRET=1: Triton\'s interpreter ran a 3-step loop {out.item()} times')


def _unview(x: Tensor, n: int) -> Tensor:
    """Inverse of :func:`_view_3d` for the kernels' contiguous outputs."""
    return x.reshape(x.shape[:1] + x.shape[4 - n:])


def _device(x: Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _forward(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, axes: tuple[AxisSpec, ...],
             scale: float) -> tuple[Tensor, Tensor]:
    """Forward kernel: ``[B, *spatial, heads, D]`` x3 -> ``(out`` (contiguous, query's shape),
    ``lse [B, heads, Z, Y, X]`` fp32 (unit leading axes for 1-D / 2-D), the backward's statistics).
    ``rpb``: ``[heads, *(2k - 1 per axis)]`` or ``None`` (read as ``[heads, 2kz - 1, 2ky - 1, 2kx - 1]``
    with unit leading axes: the same memory order)."""
    n = len(axes)
    q, k, v = (_view_3d(x, n) for x in (query, key, value))
    b, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    az, ay, ax, t = _geometry(axes, dim)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((b, heads, az.length, ay.length, ax.length), dtype=torch.float32, device=q.device)
    sizes, n_tiles = _launch_args(az, ay, ax, heads, t.tqh, t.tqw)
    bias = _bias_table(rpb, q.device, rpb_margin(t, ay.kernel, ax.kernel))
    with _device(q):
        _kernels().na_fwd_kernel[(n_tiles, heads, b)](
            q, k, v, out, lse, bias, *_strides(q), *_strides(k), *_strides(v),
            *_strides(out), *sizes, scale * LOG2E,
            D=dim, BD=max(16, _pow2(dim)), TQH=t.tqh, TQW=t.tqw, KRH=t.krh, KW=t.kw,
            HAS_RPB=rpb is not None, IEEE=q.dtype == torch.float32, UPCAST=interpreting(), DEPTH=n == 3,
            **launch_options(t))
    return _unview(out, n), lse


def _backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, out: Tensor,
              lse: Tensor, axes: tuple[AxisSpec, ...], scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backward kernels: ``(dq, dk, dv, drpb)`` (contiguous; ``drpb`` is ``None`` without ``rpb``)."""
    n = len(axes)
    q, k, v = (_view_3d(x, n) for x in (query, key, value))
    # the dq kernel reads the forward's out and lse densely: a no-op for what the forward returned,
    # a copy for anything else (e.g. a caller of the custom op handing in a strided out)
    o, lse = _view_3d(out, n).contiguous(), lse.contiguous()
    b, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    az, ay, ax, t = _geometry(axes, dim)
    do = _view_3d(grad_out if grad_out.dtype == q.dtype else grad_out.to(q.dtype), n)
    delta = torch.empty_like(lse)  # rowsum(dO * O), written by the dq kernel for the dk/dv kernel
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    sizes_q, tiles_q = _launch_args(az, ay, ax, heads, t.tqh, t.tqw)
    sizes_k, tiles_k = _launch_args(az, ay, ax, heads, t.tkh, t.tkw)
    rel = (2 * az.kernel - 1, 2 * ay.kernel - 1, 2 * ax.kernel - 1)
    # one RPB-gradient slot per forward-tiling program: zeros where a program writes nothing
    part = torch.zeros((tiles_q, b, heads, *rel) if rpb is not None else (1,), dtype=torch.float32,
                       device=q.device)
    bias = _bias_table(rpb, q.device, rpb_margin(t, ay.kernel, ax.kernel))
    common = dict(D=dim, BD=max(16, _pow2(dim)), HAS_RPB=rpb is not None, IEEE=q.dtype == torch.float32,
                  UPCAST=interpreting(), DEPTH=n == 3, **launch_options(t))
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    kern = _kernels()
    with _device(q):
        kern.na_bwd_dq_kernel[(tiles_q, heads, b)](
            q, k, v, o, do, lse, delta, bias, dq, part, *strides, *sizes_q,
            scale * LOG2E, scale, TQH=t.tqh, TQW=t.tqw, KRH=t.krh, KW=t.kw, RPY=t.rpy, **common)
        kern.na_bwd_dkdv_kernel[(tiles_k, heads, b)](
            q, k, v, do, lse, delta, bias, dk, dv, *strides, *sizes_k,
            scale * LOG2E, scale, TKH=t.tkh, TKW=t.tkw, QRH=t.qrh, QW=t.qw, **common)
    drpb = None if rpb is None else part.sum((0, 1)).view(rpb.shape).to(rpb.dtype)
    return _unview(dq, n), _unview(dk, n), _unview(dv, n), drpb


class _NATriton(torch.autograd.Function):
    """Eager path: the kernels behind an autograd Function (less host time per call than the custom ops)."""

    @staticmethod
    def forward(ctx, query, key, value, rpb, axes, scale):
        out, lse = _forward(query, key, value, rpb, axes, scale)
        ctx.save_for_backward(query, key, value, rpb, out, lse)
        ctx.axes, ctx.scale = axes, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, rpb, out, lse = ctx.saved_tensors
        return (*_backward(grad_out, query, key, value, rpb, out, lse, ctx.axes, ctx.scale), None, None)


# Under torch.compile the kernels run inside custom ops: opaque to the compiler (no graph break; shapes
# from the fake implementations) and differentiable through ``register_autograd``, like the native
# CPU kernel.
@torch.library.custom_op('localattn::na_triton_forward', mutates_args=())
def na_triton_forward(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, geom: list[int],
                      scale: float) -> tuple[Tensor, Tensor]:
    """:func:`_forward` as a custom op (``geom``: :func:`~..indexing.pack_axes` of the axes)."""
    return _forward(query, key, value, rpb, unpack_axes(geom), scale)


@na_triton_forward.register_fake
def _(query, key, value, rpb, geom, scale):
    b, heads = query.shape[0], query.shape[-2]
    lengths = [ax.length for ax in _as_3d(unpack_axes(geom))]
    return query.new_empty(query.shape), query.new_empty((b, heads, *lengths), dtype=torch.float32)


@torch.library.custom_op('localattn::na_triton_backward', mutates_args=())
def na_triton_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None,
                       out: Tensor, lse: Tensor, geom: list[int], scale: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_backward` as a custom op (``drpb`` empty without ``rpb``)."""
    dq, dk, dv, drpb = _backward(grad_out, query, key, value, rpb, out, lse, unpack_axes(geom), scale)
    return dq, dk, dv, query.new_empty(0) if drpb is None else drpb


@na_triton_backward.register_fake
def _(grad_out, query, key, value, rpb, out, lse, geom, scale):
    return (query.new_empty(query.shape), query.new_empty(query.shape), query.new_empty(query.shape),
            query.new_empty(0) if rpb is None else rpb.new_empty(rpb.shape))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, rpb, geom, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, rpb, out, lse)
    ctx.geom, ctx.scale = geom, scale


def _op_backward(ctx, grad_out: Tensor, _grad_lse):
    query, key, value, rpb, out, lse = ctx.saved_tensors
    dq, dk, dv, drpb = na_triton_backward(grad_out, query, key, value, rpb, out, lse, ctx.geom, ctx.scale)
    return dq, dk, dv, (drpb if rpb is not None else None), None, None


na_triton_forward.register_autograd(_op_backward, setup_context=_setup_context)


def na_triton(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...],
              rpb: Tensor | None, scale: float) -> Tensor:
    """Neighbourhood attention with the fused Triton kernels.

    Args:
        query, key, value: ``[B, L, heads, D]``, ``[B, H, W, heads, D]`` or ``[B, T, H, W, heads, D]``
            on CUDA (CPU tensors under ``TRITON_INTERPRET=1``); fp16, bf16 or fp32; any strides with a
            contiguous last dim; batch size and heads at most 65535 (CUDA grid limits).
        axes: one :class:`AxisSpec` per spatial axis (stride 1, non-causal; ``valid`` allowed).
        rpb: ``[heads, *(2k - 1 per axis)]`` or ``None``; gets its gradient.
        scale: logit scale.

    Returns:
        Same shape and dtype as ``query`` (contiguous).
    """
    reason = supports(axes)
    if reason is not None:
        raise ValueError(f'backend="triton" does not support {reason}')
    batch, heads = query.shape[0], query.shape[-2]
    for name, size in (('batch size', batch), ('heads', heads)):
        if size > _GRID_YZ:
            raise ValueError(f'backend="triton" launches one program per head and batch element along CUDA '
                             f'grid dims limited to {_GRID_YZ}; got {name} {size} (split the call)')
    if torch.compiler.is_compiling():
        return na_triton_forward(query, key, value, rpb, pack_axes(axes), float(scale))[0]
    return _NATriton.apply(query, key, value, rpb, axes, float(scale))
