"""FlexAttention backend: NA as a block-sparse mask on tile-major tokens (meant for CUDA).

Token order. FlexAttention skips whole ``block x block`` tiles of the score matrix and computes every
visited tile densely, so the waste is set by how compact a block of tokens is. Flattening the map
row-major makes a block a sliver of one row whose neighbours span ``k`` full rows (39x the needed
pairs at k = 7 on a 200x336 map). Here tokens are reordered *tile-major* before the call:

1. every axis is split into its ``d`` interleaved dilation groups (global index ``g + d * li``);
   each group is padded to the same length, a multiple of the tile edge, so every group becomes a
   contiguous sub-map of shape ``[..., P_a, ...]`` on which dilated NA is plain NA;
2. each group's sub-map is cut into 64-token tiles (:func:`choose_tiles`: the power-of-two shape
   with the fewest computed pairs, ``8 x 8`` for most 2-D maps, ``4 x 4 x 4``-like in 3-D) and the
   tokens of one tile are consecutive, so one flex block is one compact tile;
3. the number of blocks is padded up to a size bucket (see :func:`bucket_blocks`) with empty blocks.

Queries, keys and values share the order; the output is permuted back. The permutation is a pad, a
view and a permute (no gather). Padding tokens are never attended: their key coordinate is a
sentinel outside every window and their own window is empty.

Why 64-token blocks: with equal query and key blocks, the windows of an interior 2-D tile reach
3 x 3 key tiles whatever the tile's shape (the window sticks out on both sides), so the computed
pairs per query are ``9 x block``: 1152 for 128-token tiles (23.5x the 49 needed at k = 7, worse
than row-major on small maps), 576 for 64-token tiles (11.8x). Torch's default CUDA kernel tiles
for head dim 32 are 64 x 64 anyway; where its fp16/bf16 backward configs need 128-wide blocks (head
dim < 64 on sm80, 64-128 on sm90) the backend switches to :data:`BIG_BLOCK` for that call.

Mask. Everything the ``mask_mod``/``score_mod`` read lives in small per-token tables (``int32``,
one row per axis) in the *slot* coordinates ``g * P_a + li`` of each axis: a query's window is the
slot range ``[lo, hi)`` and a key is in it iff its slot is. Because NA is separable and tiles are
boxes, the visited blocks are the product of per-axis visited tile pairs; the block mask is built
from those exact per-axis lists (no ``N x N`` and no ``N x k^n`` tensor). The mods capture tensors
only (no per-shape Python numbers), so a compiled flex kernel does not specialise on the map size.

Compilation. Eager CUDA calls go through ``torch.compile(flex_attention, dynamic=True)`` (see
:data:`compile_flex`); with the token count bucketed the compiled graph sees a handful of shapes,
and with ``dynamic=True`` even those share one graph. :data:`compile_flex` and
:data:`COMPILED_DEVICES` are module-level so that tests can swap in a counting backend on CPU.

RPB is a ``score_mod`` gathering from the captured ``rpb`` tensor (FlexAttention differentiates
through captured tensors, so ``rpb`` gets its gradient). On CPU torch runs FlexAttention eagerly
(forward only, dense).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ...caching import table_cache
from ..indexing import AxisSpec, axis_windows

#: flex block of the old row-major layout (kept for :func:`computed_pairs` comparisons)
ROW_BLOCK = 128
#: tokens per tile = flex block size (both sides)
BLOCK = 64
#: 128-token blocks, for CUDA backward passes whose torch kernel configs need 128-wide blocks
BIG_BLOCK = 128
#: key slot of padding tokens: outside every window
_SENTINEL = -(1 << 30)

#: ``fn -> compiled fn`` used for eager calls on :data:`COMPILED_DEVICES`; swap it (e.g. for a
#: counting backend) and the next call recompiles with it
compile_flex: Callable[[Callable], Callable] = functools.partial(torch.compile, dynamic=True)
#: device types whose eager calls use the compiled kernel (eager flex elsewhere)
COMPILED_DEVICES: frozenset[str] = frozenset({'cuda'})


# ----------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------

class TileLayout(NamedTuple):
    """Static description of the tile-major order of one NA call."""

    lengths: tuple[int, ...]  # map size per axis
    dilations: tuple[int, ...]
    tiles: tuple[int, ...]  # tile edge per axis
    n_tiles: tuple[int, ...]  # tiles per dilation group per axis
    block: int  # tokens per tile = flex block
    n_blocks: int  # real blocks (dilation groups x tiles)
    n_blocks_padded: int  # bucketed block count

    @property
    def group_lengths(self) -> tuple[int, ...]:
        """Padded length ``P_a`` of every dilation group along each axis."""
        return tuple(n * t for n, t in zip(self.n_tiles, self.tiles))

    @property
    def tokens(self) -> int:
        """Token count seen by flex (real + padding)."""
        return self.n_blocks_padded * self.block



def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)

def bucket_blocks(n: int) -> int:
    """Round a block count up to ``m * 2^e`` with ``m`` in 4..7 (at most 25% padding, 4 sizes per octave)."""
    if n <= 8:
        return max(n, 1)
    e = (n - 1).bit_length() - 3  # n - 1 < 8 * 2^e
    m = -(-n // (1 << e))
    return m << e


def _factorisations(block: int, n: int) -> list[tuple[int, ...]]:
    """Power-of-two tile shapes of ``n`` axes with ``block`` tokens, most cubic first."""
    e = block.bit_length() - 1
    if n == 1:
        return [(block,)]
    shapes = [(1 << i,) + rest for i in range(e + 1) for rest in _factorisations(block >> i, n - 1)]
    return sorted(shapes, key=lambda t: (max(t) / min(t), t[::-1]))


@functools.lru_cache(maxsize=256)
def choose_tiles(axes: tuple[AxisSpec, ...], block: int = BLOCK) -> tuple[int, ...]:
    """The ``block``-token tile shape with the fewest computed pairs for ``axes`` (ties: most cubic).

    Visited blocks factor over the axes, so every candidate costs a few per-axis counts; e.g.
    ``8 x 8`` for most 2-D maps, ``32 x 2`` for a 28x28 map (7.0x the needed pairs instead of 10.7x).
    While torch traces (an outer ``torch.compile``, export) the counts would be data-dependent, so
    the most cubic shape is used there.
    """
    if torch.compiler.is_compiling():
        return _factorisations(block, len(axes))[0]
    counts: dict[tuple[int, int], int] = {}
    best, best_pairs = None, None
    for tiles in _factorisations(block, len(axes)):
        visited = 1
        for a, (ax, t) in enumerate(zip(axes, tiles)):
            if (a, t) not in counts:
                nt = _ceil_div(_ceil_div(ax.length, ax.dilation), t)
                counts[a, t] = int(_axis_kv_tiles(ax, t, nt)[1].sum())
            visited *= counts[a, t]
        if best_pairs is None or visited < best_pairs:
            best, best_pairs = tiles, visited
    return best


def tile_layout(axes: tuple[AxisSpec, ...], tiles: tuple[int, ...] | None = None,
                bucket: bool = True) -> TileLayout:
    """Tile-major layout of ``axes`` (default tiles: :func:`choose_tiles`)."""
    tiles = tuple(tiles or choose_tiles(axes))
    if len(tiles) != len(axes):
        raise ValueError(f'{len(tiles)} tile edges for {len(axes)} axes')
    lengths = tuple(ax.length for ax in axes)
    dilations = tuple(ax.dilation for ax in axes)
    n_tiles = tuple(_ceil_div(_ceil_div(n, d), t) for n, d, t in zip(lengths, dilations, tiles))
    n_blocks = math.prod(dilations) * math.prod(n_tiles)
    return TileLayout(lengths, dilations, tiles, n_tiles, math.prod(tiles), n_blocks,
                      bucket_blocks(n_blocks) if bucket else n_blocks)


def to_tile_major(x: Tensor, layout: TileLayout) -> Tensor:
    """``[B, *spatial, heads, c]`` -> ``[B, heads, tokens, c]`` in tile-major order (zero padding)."""
    b, h, c = x.shape[0], x.shape[-2], x.shape[-1]
    n = len(layout.lengths)
    pad = []
    for length, d, p in zip(reversed(layout.lengths), reversed(layout.dilations),
                            reversed(layout.group_lengths)):
        pad += [0, d * p - length]
    x = F.pad(x, [0, 0, 0, 0] + pad)
    # axis a of length d*P = [n_tiles, tile, d] (global = g + d * (t * tile + o))
    shape = [b]
    for nt, t, d in zip(layout.n_tiles, layout.tiles, layout.dilations):
        shape += [nt, t, d]
    x = x.reshape(shape + [h, c])
    g = [3 + 3 * a for a in range(n)]
    nt = [1 + 3 * a for a in range(n)]
    tl = [2 + 3 * a for a in range(n)]
    x = x.permute([0, 3 * n + 1] + g + nt + tl + [3 * n + 2]).reshape(b, h, -1, c)
    # contiguous: a reshape that happens to be a view keeps odd strides, and compiled flex guards on them
    return F.pad(x, [0, 0, 0, layout.tokens - x.shape[2]]).contiguous()


def from_tile_major(x: Tensor, layout: TileLayout, shape: torch.Size) -> Tensor:
    """Inverse of :func:`to_tile_major`: ``[B, heads, tokens, c]`` -> ``shape`` (``[B, *spatial, heads, c]``)."""
    b, h, c = x.shape[0], x.shape[1], x.shape[-1]
    n = len(layout.lengths)
    real = layout.n_blocks * layout.block
    x = x[:, :, :real].reshape([b, h] + list(layout.dilations) + list(layout.n_tiles) + list(layout.tiles) + [c])
    # dims: 0 b, 1 h, 2.. g_a, 2+n.. nt_a, 2+2n.. t_a, 2+3n c
    order = [0]
    for a in range(n):
        order += [2 + n + a, 2 + 2 * n + a, 2 + a]
    x = x.permute(order + [1, 2 + 3 * n])
    x = x.reshape([b] + [d * p for d, p in zip(layout.dilations, layout.group_lengths)] + [h, c])
    return x[(slice(None),) + tuple(slice(0, n_) for n_ in layout.lengths)].reshape(shape)


# ----------------------------------------------------------------------------------------------
# per-axis tables (slot coordinates: g * P + li)
# ----------------------------------------------------------------------------------------------

class _AxisSlots(NamedTuple):
    real: Tensor  # [d, P] bool: slot holds a map position
    slot: Tensor  # [d, P] slot index (g * P + li)
    lo: Tensor  # [d, P] first window slot (0 for padding)
    hi: Tensor  # [d, P] one past the last window slot (0 for padding: empty)


def _axis_slots(ax: AxisSpec, group_length: int) -> _AxisSlots:
    d, p = ax.dilation, group_length
    win = axis_windows(ax)
    g = torch.arange(d)[:, None]
    li = torch.arange(p)[None, :]
    glob = g + d * li
    real = glob < ax.length
    safe = torch.where(real, glob, 0)
    start = torch.div(win.first[safe] - g, d, rounding_mode='floor')
    count = torch.where(real, win.count[safe], 0)
    slot = g * p + li
    lo = torch.where(real, g * p + start, 0)
    return _AxisSlots(real, slot, lo, lo + count)


def _axis_kv_tiles(ax: AxisSpec, tile: int, n_tiles: int) -> tuple[Tensor, Tensor]:
    """Exact key tiles of every query tile of one axis, within its dilation group.

    Returns ``(tiles, valid)``, ``[d, n_tiles, M]``: local key-tile indices (ascending, starting at
    the first tile any of the tile's windows touches) and whether the query tile reaches that key
    tile. ``M`` is a static bound on how many tiles the windows of ``tile`` queries can touch.
    """
    d, p = ax.dilation, tile * n_tiles
    s = _axis_slots(ax, p)
    # the windows of `tile` consecutive queries cover < tile + kernel + stride - 1 keys
    m = min(n_tiles, 2 + (tile + ax.kernel + ax.stride - 2) // tile)
    start = s.lo - torch.arange(d)[:, None] * p  # local window start (0 for padding)
    size = s.hi - s.lo  # 0 for padding and for queries without keys
    first = torch.where(size > 0, torch.div(start, tile, rounding_mode='floor'), n_tiles)
    base = first.view(d, n_tiles, tile).amin(-1).clamp(max=n_tiles - 1)  # [d, nT]
    t = torch.arange(ax.kernel)
    key_tile = torch.div(start.unsqueeze(-1) + t, tile, rounding_mode='floor').view(d, n_tiles, tile, -1)
    offset = key_tile - base[..., None, None]
    used = (t < size.unsqueeze(-1)).view(d, n_tiles, tile, -1)
    if not torch.compiler.is_compiling() and bool((used & ((offset < 0) | (offset >= m))).any()):
        raise AssertionError(f'key-tile bound {m} too small for {ax} with tile {tile}')
    offset = torch.where(used, offset, m)  # column m: scratch for unused window slots
    reach = torch.zeros(d, n_tiles, m + 1, dtype=torch.bool)
    reach.scatter_(-1, offset.flatten(2), True)
    tiles = base.unsqueeze(-1) + torch.arange(m)
    return tiles, reach[..., :m] & (tiles < n_tiles)


def _token_tables(axes: tuple[AxisSpec, ...], layout: TileLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token tables in tile-major order, each ``[n_axes, tokens]`` int32: key slot, window lo/hi, RPB base.

    Padding tokens get the sentinel key slot and an empty window on every axis.
    """
    n = len(axes)
    grid = list(layout.dilations) + list(layout.n_tiles) + list(layout.tiles)
    slots = []
    for a, (ax, p) in enumerate(zip(axes, layout.group_lengths)):
        s = _axis_slots(ax, p)
        shape = [1] * (3 * n)
        shape[a], shape[n + a], shape[2 * n + a] = ax.dilation, layout.n_tiles[a], layout.tiles[a]
        slots.append(_AxisSlots(*(x.view(shape) for x in s)))
    real = functools.reduce(torch.logical_and, [s.real for s in slots]).expand(grid)
    pad = layout.tokens - real.numel()

    def table(values: list[Tensor], fill: int) -> Tensor:
        rows = [torch.where(real, v.expand(grid), fill).reshape(-1) for v in values]
        return F.pad(torch.stack(rows), [0, pad], value=fill).to(torch.int32)

    key = table([s.slot for s in slots], _SENTINEL)
    lo = table([s.lo for s in slots], 0)
    hi = table([s.hi for s in slots], 0)
    rel = table([ax.kernel - 1 - s.slot for ax, s in zip(axes, slots)], 0)
    return key, lo, hi, rel


def _kv_blocks(axes: tuple[AxisSpec, ...], layout: TileLayout) -> tuple[Tensor, Tensor]:
    """``(kv_num_blocks [Q], kv_indices [Q, KV])`` of the tile-major layout (bucket blocks: empty rows).

    A block is a tile of one dilation group; its key blocks are the product of the per-axis key tiles.
    """
    n = len(axes)
    per_axis = [_axis_kv_tiles(ax, t, nt) for ax, t, nt in zip(axes, layout.tiles, layout.n_tiles)]
    # dims: g_1..g_n, t_1..t_n (query tile), m_1..m_n (key tile slot)
    group = torch.zeros([1] * (3 * n), dtype=torch.long)
    tile = torch.zeros([1] * (3 * n), dtype=torch.long)
    valid = torch.ones([1] * (3 * n), dtype=torch.bool)
    for a, (ax, (tiles, ok)) in enumerate(zip(axes, per_axis)):
        shape = [1] * (3 * n)
        shape[a] = ax.dilation
        group = group * ax.dilation + torch.arange(ax.dilation).view(shape)
        shape[n + a], shape[2 * n + a] = tiles.shape[1], tiles.shape[2]
        tile = tile * layout.n_tiles[a] + tiles.view(shape)
        valid = valid & ok.view(shape)
    index = group * math.prod(layout.n_tiles) + tile
    full = list(layout.dilations) + list(layout.n_tiles) + [t.shape[-1] for t, _ in per_axis]
    index = index.expand(full).reshape(layout.n_blocks, -1)
    valid = valid.expand(full).reshape(layout.n_blocks, -1)
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)
    index = index.gather(1, order)
    count = valid.sum(-1)
    rows = cols = layout.n_blocks_padded
    width = index.shape[1]
    index = index[:, :cols] if width >= cols else F.pad(index, [0, cols - width])
    index = F.pad(index, [0, 0, 0, rows - layout.n_blocks])
    count = F.pad(count, [0, rows - layout.n_blocks])
    return count.to(torch.int32), index.to(torch.int32)


class _Plan(NamedTuple):
    layout: TileLayout
    block_mask: BlockMask
    key: Tensor
    lo: Tensor
    hi: Tensor
    rel: Tensor


def _window_mask_mod(key: Tensor, lo: Tensor, hi: Tensor) -> Callable:
    """``mask_mod``: the key's slot lies in the query's window slot range on every axis."""
    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        ok = None
        for a in range(key.shape[0]):
            ks = key[a, kv_idx]
            hit = (ks >= lo[a, q_idx]) & (ks < hi[a, q_idx])
            ok = hit if ok is None else ok & hit
        return ok

    return mask_mod


@table_cache(maxsize=32)
def plan(axes: tuple[AxisSpec, ...], device: torch.device, tiles: tuple[int, ...] | None = None) -> _Plan:
    """Layout, block mask and token tables of one NA call (cached per shape and device)."""
    layout = tile_layout(axes, tiles)
    key, lo, hi, rel = (x.to(device) for x in _token_tables(axes, layout))
    count, index = (x.to(device) for x in _kv_blocks(axes, layout))
    mask = BlockMask.from_kv_blocks(count[None, None], index[None, None], BLOCK_SIZE=layout.block,
                                    mask_mod=_window_mask_mod(key, lo, hi),
                                    seq_lengths=(layout.tokens, layout.tokens))
    return _Plan(layout, mask, key, lo, hi, rel)


def block_mask(axes: tuple[AxisSpec, ...], device: torch.device) -> BlockMask:
    """Block mask (batch/head broadcast) of the tile-major layout with the default tiles."""
    return plan(axes, device, choose_tiles(axes)).block_mask


def _rpb_score_mod(axes: tuple[AxisSpec, ...], key: Tensor, rel: Tensor, rpb: Tensor) -> Callable:
    """``score_mod`` adding ``rpb[h, (ky - qy) / d + k - 1, ...]`` (index clamped for masked pairs)."""
    table = rpb.reshape(rpb.shape[0], -1)
    widths = [2 * ax.kernel - 1 for ax in axes]

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        idx = 0
        for a, w in enumerate(widths):
            r = (key[a, kv_idx] + rel[a, q_idx]).clamp(0, w - 1)
            idx = idx * w + r
        return score + table[h, idx]

    return score_mod


# ----------------------------------------------------------------------------------------------
# computed pairs (what the block mask makes flex compute)
# ----------------------------------------------------------------------------------------------

def computed_pairs(axes: tuple[AxisSpec, ...], layout: str = 'tile', tiles: tuple[int, ...] | None = None) -> int:
    """Query-key pairs flex computes: the sum over visited blocks of ``block_q * block_kv``.

    ``layout='tile'``: the tile-major order of this backend (``tiles`` default :func:`choose_tiles`; bucket
    blocks are empty and cost nothing). ``layout='row'``: the former row-major order with
    :data:`ROW_BLOCK`-token blocks. Needed pairs, for comparison: ``tokens * prod(kernels)``.
    """
    if layout == 'row':
        return _row_major_blocks(axes) * ROW_BLOCK * ROW_BLOCK
    if layout != 'tile':
        raise ValueError(f"layout must be 'tile' or 'row', got {layout!r}")
    lay = tile_layout(axes, tiles, bucket=False)
    visited = 1
    for ax, t, nt in zip(axes, lay.tiles, lay.n_tiles):
        visited *= int(_axis_kv_tiles(ax, t, nt)[1].sum())
    return visited * lay.block * lay.block


def needed_pairs(axes: tuple[AxisSpec, ...]) -> int:
    """``tokens * prod(kernels)``: the query-key pairs NA needs."""
    return math.prod(ax.length for ax in axes) * math.prod(ax.kernel for ax in axes)


@functools.lru_cache(maxsize=64)
def _row_major_blocks(axes: tuple[AxisSpec, ...], chunk: int = 32) -> int:
    """Visited ``ROW_BLOCK`` blocks of the row-major order, ``chunk`` query blocks at a time."""
    lengths = [ax.length for ax in axes]
    n = math.prod(lengths)
    n_blocks = -(-n // ROW_BLOCK)
    strides = [math.prod(lengths[a + 1:]) for a in range(len(axes))]
    keys = []
    for ax in axes:
        win = axis_windows(ax)
        t = torch.arange(ax.kernel)
        keys.append((win.first[:, None] + ax.dilation * t, t < win.count[:, None]))
    total = 0
    for qb in range(0, n_blocks, chunk):
        q = torch.arange(qb * ROW_BLOCK, min(n, (qb + chunk) * ROW_BLOCK))
        flat = torch.zeros(q.shape[0], 1, dtype=torch.long)
        ok = torch.ones(q.shape[0], 1, dtype=torch.bool)
        for (k, v), s, length in zip(keys, strides, lengths):
            c = (q // s) % length
            flat = (flat[:, :, None] + s * k[c][:, None, :]).flatten(1)
            ok = (ok[:, :, None] & v[c][:, None, :]).flatten(1)
        pairs = (q[:, None] // ROW_BLOCK) * n_blocks + flat // ROW_BLOCK
        total += int(torch.unique(pairs[ok]).numel())
    return total


# ----------------------------------------------------------------------------------------------
# the op
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _compiled(compile_fn: Callable) -> Callable:
    return compile_fn(flex_attention)


def _bwd_accepts(block: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether torch's default CUDA flex backward configs fit ``block``-token sparse blocks."""
    try:
        from torch._inductor.virtualized import V
        confs = V.choices.get_flex_attention_bwd_configs(head_dim, dtype, 'cuda')
    except Exception:  # private API moved: assume the conservative answer
        return False
    return any(all(block % x == 0 for x in (c.block_m1, c.block_n1, c.block_m2, c.block_n2)) for c in confs)


def _cuda_options(block: int, head_dim: int, dtype: torch.dtype) -> dict | None:
    """Forward kernel tiles of at most 64 x 64 that divide ``block`` (``None``: torch's default fits).

    Torch's default fp16/bf16 forward tile for head dim 64 on sm90 is 128 x 128, which neither divides
    64-token blocks nor fits the shared memory with this backend's mods (measured on an H200).
    """
    try:
        from torch._inductor.virtualized import V
        conf = V.choices.get_flex_attention_fwd_configs(head_dim, dtype, 'cuda')[-1]
        m, n = conf.block_m, conf.block_n
    except Exception:  # private API moved
        m = n = 128
    if m <= 64 and n <= 64 and block % m == 0 and block % n == 0:
        return None
    return {'BLOCK_M': math.gcd(block, min(m, 64)), 'BLOCK_N': math.gcd(block, min(n, 64))}


def _block_for(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None) -> int:
    """:data:`BLOCK`; on CUDA :data:`BIG_BLOCK` when a backward is due that torch cannot tile with 64."""
    if query.device.type != 'cuda' or not torch.is_grad_enabled():
        return BLOCK
    grads = any(x is not None and x.requires_grad for x in (query, key, value, rpb))
    if grads and not _bwd_accepts(BLOCK, query.shape[-1], query.dtype):
        return BIG_BLOCK
    return BLOCK


def na_flex(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...],
            rpb: Tensor | None, scale: float) -> Tensor:
    """Neighbourhood attention with FlexAttention on tile-major tokens.

    Args:
        query, key, value: ``[B, *spatial, heads, head_dim]``.
        axes: one :class:`AxisSpec` per spatial axis.
        rpb: ``[heads, 2k_1 - 1, ..., 2k_n - 1]`` or ``None``.
        scale: logit scale.

    Returns:
        ``[B, *spatial, heads, head_dim]``.
    """
    p = plan(axes, query.device, choose_tiles(axes, _block_for(query, key, value, rpb)))
    q, k, v = (to_tile_major(x, p.layout) for x in (query, key, value))
    score_mod = None
    if rpb is not None:
        table = rpb.to(torch.promote_types(query.dtype, torch.float32))
        score_mod = _rpb_score_mod(axes, p.key, p.rel, table)
    options = None
    if query.device.type == 'cuda':
        options = _cuda_options(p.layout.block, query.shape[-1], query.dtype)
    # eager: the compiled kernel; inside torch.compile the outer compilation handles flex_attention
    compiled = query.device.type in COMPILED_DEVICES and not torch.compiler.is_compiling()
    attend = _compiled(compile_flex) if compiled else flex_attention
    out = attend(q, k, v, score_mod=score_mod, block_mask=p.block_mask, scale=scale, kernel_options=options)
    return from_tile_major(out, p.layout, query.shape)
