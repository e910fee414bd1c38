"""FlexAttention backend: NA as a block-sparse mask on flattened tokens (meant for CUDA).

The window rule becomes a ``mask_mod`` reading the per-axis window tables of
:func:`~.indexing.axis_windows`; RPB becomes a ``score_mod`` that gathers from the captured ``rpb``
tensor (FlexAttention differentiates through captured tensors, so ``rpb`` gets its gradient). The
block mask is built directly from the explicit neighbour lists, so no ``N x N`` mask is evaluated.
On CUDA the compiled kernel is used; on CPU torch runs FlexAttention eagerly (forward only, dense).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ...caching import table_cache
from ..indexing import AxisSpec, axis_windows
from .reference import neighbour_table

BLOCK = 128


def _coords(axes: tuple[AxisSpec, ...]) -> Callable[[Tensor], list[Tensor]]:
    """Map flat row-major token indices to per-axis coordinates."""
    lengths = [ax.length for ax in axes]
    strides = [math.prod(lengths[a + 1:]) for a in range(len(axes))]
    return lambda idx: [(idx // s) % n for s, n in zip(strides, lengths)]


@table_cache(maxsize=32)
def block_mask(axes: tuple[AxisSpec, ...], device: torch.device) -> BlockMask:
    """Block mask (batch/head broadcast) whose ``mask_mod`` is the NA window rule."""
    coords = _coords(axes)
    tables = [(w.first.to(device), w.count.to(device), ax.dilation)
              for w, ax in zip(map(axis_windows, axes), axes)]

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        ok = None
        for (first, count, d), qc, kc in zip(tables, coords(q_idx), coords(kv_idx)):
            diff = kc - first[qc]
            hit = (diff >= 0) & (diff < d * count[qc]) & (diff % d == 0)
            ok = hit if ok is None else ok & hit
        return ok

    index, valid, _ = (x.to(device) for x in neighbour_table(axes))
    n = index.shape[0]
    n_blocks = -(-n // BLOCK)
    pairs = (torch.arange(n, device=device)[:, None] // BLOCK) * n_blocks + index // BLOCK
    reach = torch.zeros(n_blocks * n_blocks, dtype=torch.bool, device=device)
    reach[pairs[valid]] = True
    reach = reach.view(n_blocks, n_blocks)
    kv_indices = torch.argsort((~reach).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return BlockMask.from_kv_blocks(reach.sum(-1, dtype=torch.int32)[None, None], kv_indices[None, None],
                                    BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(n, n))


def _rpb_score_mod(axes: tuple[AxisSpec, ...], rpb: Tensor) -> Callable:
    """``score_mod`` adding ``rpb[h, (ky - qy) / d + k - 1, ...]`` (index clamped for masked pairs)."""
    coords = _coords(axes)
    table = rpb.reshape(rpb.shape[0], -1)

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        idx = 0
        for ax, qc, kc in zip(axes, coords(q_idx), coords(kv_idx)):
            rel = ((kc - qc) // ax.dilation + ax.kernel - 1).clamp(0, 2 * ax.kernel - 2)
            idx = idx * (2 * ax.kernel - 1) + rel
        return score + table[h, idx]

    return score_mod


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    return torch.compile(flex_attention, dynamic=False)


def na_flex(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...],
            rpb: Tensor | None, scale: float) -> Tensor:
    """Neighbourhood attention with FlexAttention.

    Args:
        query, key, value: ``[B, *spatial, heads, head_dim]``.
        axes: one :class:`AxisSpec` per spatial axis.
        rpb: ``[heads, 2k_1 - 1, ..., 2k_n - 1]`` or ``None``.
        scale: logit scale.

    Returns:
        ``[B, *spatial, heads, head_dim]``.
    """
    b, h, c = query.shape[0], query.shape[-2], query.shape[-1]
    q, k, v = (x.reshape(b, -1, h, c).transpose(1, 2) for x in (query, key, value))
    score_mod = None
    if rpb is not None:
        score_mod = _rpb_score_mod(axes, rpb.to(torch.promote_types(query.dtype, torch.float32)))
    # eager CUDA: the compiled kernel; inside torch.compile the outer compilation handles flex_attention
    attend = _compiled_flex() if query.device.type == 'cuda' and not torch.compiler.is_compiling() else flex_attention
    out = attend(q, k, v, score_mod=score_mod, block_mask=block_mask(axes, query.device), scale=scale)
    return out.transpose(1, 2).reshape(query.shape)
