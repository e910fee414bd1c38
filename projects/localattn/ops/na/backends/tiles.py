"""The ``tiles`` backend: pure-torch batched dense attention of query tiles against key halos.

Any device; what ``backend='auto'`` runs eagerly off CUDA's fast paths: on CUDA for fp64 or with
dropout, on CPU with dropout or where the compiled kernel of :mod:`.native` is unavailable.

Each axis is cut into tiles of ``T`` consecutive queries of one dilation group (see
:func:`~.indexing.axis_tiles`); the windows of a tile's queries lie in one run of ``H <= T + k - 1``
keys of that group. An n-D tile of ``Tq = prod(T)`` queries therefore attends to ``Hk = prod(H)``
halo keys: scores are one batched matmul ``[Tq, c] x [c, Hk]`` per (batch, head, tile), and the window
rule becomes an additive ``0 / -inf`` mask. Tiles with the same per-axis window pattern (all interior
tiles, for instance) share one mask/RPB-index table, so the cached tables stay small. Memory is
``O(N * Hk / Tq)`` per (batch, head): linear in the number of pixels, never ``N x N`` and never
``k^n`` copies of K/V. A custom autograd function keeps the probabilities and computes the backward
pass tile-wise too (key/value gradients are scattered back with ``index_add_``).
"""
from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import torch
from torch import Tensor

from ...caching import table_cache
from ..indexing import AxisSpec, axis_tiles

# Tile edge per number of spatial axes (rounded up to a multiple of the stride, capped by the axis).
DEFAULT_TILE = {1: 64, 2: 8, 3: 4}


class TilePlan(NamedTuple):
    """Cached gather indices and window tables for one (axes, tiles, heads, device).

    Tiles are ordered by window-pattern class; class ``c`` owns tiles ``bounds[c]:bounds[c + 1]``.
    """

    q_index: Tensor  # [heads * P * Tq] rows of query.view(B, N * heads, c) feeding each tile slot
    grad_index: Tensor  # q_index with padding slots sent to row N * heads (a zero row)
    kv_index: Tensor  # [heads * P * Hk] rows of key/value feeding each halo slot
    out_index: Tensor  # [N * heads] tile slot holding each output row
    mask: Tensor  # [C, Tq, Hk] bool window mask per class
    rel: Tensor  # [C, Tq, Hk] flat RPB index per class (the extra last slot where masked)
    bounds: tuple[int, ...]  # C + 1 tile offsets of the classes
    empty_rows: bool  # some query has no valid key (only with ``valid`` lengths)


def default_tiles(axes: tuple[AxisSpec, ...]) -> tuple[int, ...]:
    """Tile edge per axis: ``DEFAULT_TILE`` rounded up to the stride, at most the group length."""
    target = DEFAULT_TILE[len(axes)]
    tiles = []
    for ax in axes:
        group = -(-ax.length // ax.dilation)
        edge = min(max(target, ax.kernel), group)
        tiles.append(-(-edge // ax.stride) * ax.stride)
    return tuple(tiles)


def _classes(mask: Tensor, rel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Deduplicate per-tile tables ``[n, T, H]`` into ``(class_of_tile [n], mask [C, T, H], rel [C, T, H])``."""
    n = mask.shape[0]
    key = torch.cat([mask.view(n, -1).long(), rel.view(n, -1)], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    half = uniq.shape[1] // 2
    return inverse, uniq[:, :half].bool().view(-1, *mask.shape[1:]), uniq[:, half:].view(-1, *mask.shape[1:])


def _spread(parts: list[Tensor]) -> list[Tensor]:
    """View per-axis tensors ``[m_a, r_a, ...]`` so they broadcast to ``[m_1..m_n, r_1..r_n, ...]``."""
    n = len(parts)
    out = []
    for a, x in enumerate(parts):
        shape = [1] * (n * x.dim())
        for dim, size in enumerate(x.shape):
            shape[a + n * dim] = size
        out.append(x.view(shape))
    return out


def _ravel(parts: list[Tensor], weights: list[int]) -> Tensor:
    """Row-major combination ``sum_a parts[a] * weights[a]`` over the spread axes; -1 where any part is -1."""
    xs = _spread(parts)
    total = sum(x * w for x, w in zip(xs, weights))
    return torch.where(functools.reduce(operator.or_, [x < 0 for x in xs]), -1, total)


def _row_major(sizes: list[int]) -> list[int]:
    return [math.prod(sizes[a + 1:]) for a in range(len(sizes))]


@table_cache(maxsize=32)
def tile_plan(axes: tuple[AxisSpec, ...], tiles: tuple[int, ...], heads: int,
              device: torch.device) -> TilePlan:
    """Build (and cache) the gather indices and per-class window tables of a ``tiles`` NA call."""
    per_axis = [axis_tiles(ax, t) for ax, t in zip(axes, tiles)]
    classes = [_classes(t.mask, t.rel) for t in per_axis]
    lengths = [ax.length for ax in axes]
    widths = [2 * ax.kernel - 1 for ax in axes]
    n_classes = [len(c[1]) for c in classes]

    q_flat = _ravel([t.query for t in per_axis], _row_major(lengths))  # [P, Tq]
    kv_flat = _ravel([t.key for t in per_axis], _row_major(lengths))  # [P, Hk]
    tile_class = _ravel([c[0] for c in classes], _row_major(n_classes)).flatten()  # [P]
    mask = functools.reduce(operator.and_, _spread([c[1] for c in classes]))
    mask = mask.reshape(math.prod(n_classes), math.prod(tiles), -1)
    rel = _ravel([c[2] for c in classes], _row_major(widths)).reshape(mask.shape)
    rel = torch.where(mask, rel, math.prod(widths))

    order = torch.argsort(tile_class, stable=True)
    n_tiles = len(tile_class)
    q_flat, kv_flat = (x.reshape(n_tiles, -1)[order].flatten() for x in (q_flat, kv_flat))
    bounds = [0] + torch.bincount(tile_class, minlength=len(mask)).cumsum(0).tolist()
    n = math.prod(lengths)
    head = torch.arange(heads)
    real = q_flat >= 0
    slot = torch.empty(n, dtype=torch.long)
    slot[q_flat[real]] = torch.arange(q_flat.numel())[real]
    rows = q_flat.clamp(min=0) * heads + head[:, None]  # [heads, P * Tq]
    tensors = dict(
        q_index=rows.flatten(),
        grad_index=torch.where(real, rows, n * heads).flatten(),
        kv_index=(kv_flat.clamp(min=0) * heads + head[:, None]).flatten(),
        out_index=(slot[:, None] + head * q_flat.numel()).flatten(),
        mask=mask, rel=rel)
    empty_rows = any(bool((t.mask.sum(-1)[t.query >= 0] == 0).any()) for t in per_axis)
    return TilePlan(**{k: v.to(device) for k, v in tensors.items()}, bounds=tuple(bounds),
                    empty_rows=empty_rows)


class _TiledAttention(torch.autograd.Function):
    """Core of the tiles backend: gathers, tile scores, softmax, output scatter, and the backward pass.

    ``addend`` (``[h or 1, C, Tq, Hk]``, statistics dtype) is the per-class bias + ``-inf`` mask.
    Saves the tiles, the (fp32) probabilities and the output; backward uses
    ``dS = P * (dP - rowsum(dO * O))`` and scatters key/value gradients back with ``index_add_``.
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, addend: Tensor, plan: TilePlan,
                scale: float, dropout_p: float) -> Tensor:
        b, h, c = query.shape[0], query.shape[-2], query.shape[-1]
        n_tiles, n_q, n_k = plan.bounds[-1], plan.mask.shape[1], plan.mask.shape[2]

        def gather(x: Tensor, index: Tensor, m: int) -> Tensor:
            return x.reshape(b, -1, c).index_select(1, index).view(b, h, n_tiles, m, c)

        q = gather(query, plan.q_index, n_q).mul_(scale)
        k, v = gather(key, plan.kv_index, n_k), gather(value, plan.kv_index, n_k)
        logits = torch.matmul(q, k.transpose(-1, -2)).to(addend.dtype)  # [B, h, P, Tq, Hk]
        for cls, (lo, hi) in enumerate(zip(plan.bounds, plan.bounds[1:])):
            logits[:, :, lo:hi] += addend[:, cls, None]
        attn = logits.softmax(-1)
        del logits
        if plan.empty_rows:
            for cls, (lo, hi) in enumerate(zip(plan.bounds, plan.bounds[1:])):
                attn[:, :, lo:hi] *= plan.mask[cls]
        keep = None
        if dropout_p > 0:
            keep = torch.empty_like(attn, dtype=torch.bool).bernoulli_(1 - dropout_p)
            probs = attn * keep / (1 - dropout_p)
        else:
            probs = attn
        out = torch.matmul(probs.to(value.dtype), v)  # [B, h, P, Tq, c]
        out = out.view(b, -1, c).index_select(1, plan.out_index).view(query.shape)
        ctx.save_for_backward(q, k, v, attn, keep, out)
        ctx.plan, ctx.scale, ctx.dropout_p = plan, scale, dropout_p
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, attn, keep, out = ctx.saved_tensors
        plan, scale, p_drop = ctx.plan, ctx.scale, ctx.dropout_p
        b, h, n_tiles, n_q, c = q.shape
        rows = grad_out.reshape(b, -1, c)
        padded = torch.cat([rows, rows.new_zeros(b, 1, c)], 1)
        d_out = padded.index_select(1, plan.grad_index).view(b, h, n_tiles, n_q, c)
        o = out.reshape(b, -1, c).index_select(1, plan.q_index)
        delta = (o.view_as(d_out) * d_out).sum(-1, keepdim=True, dtype=attn.dtype)  # rowsum(dO * O)
        probs = attn if keep is None else attn * keep / (1 - p_drop)
        d_value = torch.matmul(probs.to(v.dtype).transpose(-1, -2), d_out)
        d_attn = torch.matmul(d_out, v.transpose(-1, -2)).to(attn.dtype)
        if keep is not None:
            d_attn = d_attn * keep / (1 - p_drop)
        d_logits = d_attn.sub_(delta).mul_(attn)  # [B, h, P, Tq, Hk]
        d_addend = None
        if ctx.needs_input_grad[3]:
            d_addend = torch.stack([d_logits[:, :, lo:hi].sum((0, 2))
                                    for lo, hi in zip(plan.bounds, plan.bounds[1:])], 1)
        d_logits = d_logits.to(q.dtype)
        d_query = torch.matmul(d_logits, k).mul_(scale).view(b, -1, c).index_select(1, plan.out_index)
        d_key = torch.matmul(d_logits.transpose(-1, -2), q)
        shape = (b, plan.out_index.numel(), c)
        d_key = q.new_zeros(shape).index_add_(1, plan.kv_index, d_key.view(b, -1, c))
        d_value = q.new_zeros(shape).index_add_(1, plan.kv_index, d_value.view(b, -1, c))
        return d_query.view(out.shape), d_key.view(out.shape), d_value.view(out.shape), d_addend, None, None, None


def na_tiles(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...],
             rpb: Tensor | None, scale: float, dropout_p: float = 0.0,
             tiles: tuple[int, ...] | None = None) -> Tensor:
    """Neighbourhood attention by query tiles and key halos.

    Arguments and result as :func:`~.reference.na_reference`, plus ``tiles``: the tile edge per
    axis (multiples of the strides); default :func:`default_tiles`.
    """
    h = query.shape[-2]
    tiles = default_tiles(axes) if tiles is None else tiles
    plan = tile_plan(axes, tiles, h, query.device)
    stats = torch.promote_types(query.dtype, torch.float32)
    low = torch.finfo(stats).min
    if rpb is None:
        addend = torch.zeros(plan.mask.shape, dtype=stats, device=query.device).masked_fill_(~plan.mask, low)[None]
    else:
        table = torch.cat([rpb.reshape(h, -1).to(stats), rpb.new_full((h, 1), low, dtype=stats)], 1)
        addend = table[:, plan.rel]  # [h, C, Tq, Hk]
    return _TiledAttention.apply(query, key, value, addend, plan, scale, dropout_p)
