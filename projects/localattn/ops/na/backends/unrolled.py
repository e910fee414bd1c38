"""Unrolled backend: NA as a short loop over window offsets, in plain indexing ops (the export path).

For every offset ``t`` of the leading axes' windows, the keys of all queries are gathered with one
``index_select`` per leading axis (key index ``first[i] + d * t`` of :func:`~.indexing.axis_windows`),
then the last axis's whole window with one more ``index_select``: a ``[B, N, k_last, heads, d]``
block. Its logits, the bias and the window mask are concatenated over the ``prod(k[:-1])`` offsets,
soft-maxed, and the output is accumulated block by block.

Only standard ops (``index_select``, ``einsum``, ``softmax``), no custom kernel and no data-dependent
shapes: this is what ``backend='auto'`` runs under ``torch.export`` / ONNX export. Transient memory is
one ``k_last`` block of keys or values (``k_last x`` the input) plus the ``[B, N, heads, prod(k)]``
logits, where the ``reference`` gather holds ``prod(k) x`` the input twice.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ..indexing import AxisSpec, axis_windows
from .reference import masked_softmax


def _axis_tables(ax: AxisSpec, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(key index, in window, bias index)`` of every (query, window slot) along one axis, ``[L, k]``."""
    win = axis_windows(ax)
    t = torch.arange(ax.kernel)
    index = (win.first[:, None] + ax.dilation * t).clamp(0, ax.length - 1)
    inside = t < win.count[:, None]
    rel = (win.rel[:, None] + t).clamp(0, 2 * ax.kernel - 2)
    return index.to(device), inside.to(device), rel.to(device)


def na_unrolled(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...], rpb: Tensor | None,
                scale: float, dropout_p: float = 0.0) -> Tensor:
    """Neighbourhood attention with per-offset gathers (see the module docstring).

    Arguments and result as :func:`~.reference.na_reference` (the contract of every backend).
    """
    n = len(axes)
    b, h, c = query.shape[0], query.shape[-2], query.shape[-1]
    n_q = math.prod([ax.length for ax in axes])
    k_last = axes[-1].kernel
    compute = torch.promote_types(query.dtype, torch.float32)
    tables = [_axis_tables(ax, query.device) for ax in axes]
    q = query.to(compute).reshape(b, n_q, h, c)
    k, v = key.to(compute), value.to(compute)
    bias = None if rpb is None else rpb.to(compute)
    spatial_ones = [1] * n

    def block(x: Tensor, offsets: tuple[int, ...]) -> Tensor:
        """``[B, *spatial, h, c]`` -> the keys of window slots ``(*offsets, :)``: ``[B, N, k_last, h, c]``."""
        for a, t in enumerate(offsets):
            x = x.index_select(1 + a, tables[a][0][:, t])
        x = x.index_select(n, tables[-1][0].flatten())
        return x.reshape(b, n_q, k_last, h, c)

    logits, masks = [], []
    lead = list(itertools.product(*(range(ax.kernel) for ax in axes[:-1])))
    for offsets in lead:
        # products and sums, not einsum: ONNX runtimes run these tiny contractions much faster so
        logits.append((q.unsqueeze(2) * block(k, offsets)).sum(-1).transpose(2, 3))  # [B, N, h, k_last]
        inside = tables[-1][1].view(*spatial_ones[:-1], -1, k_last)             # [1.., L_last, k_last]
        for a, t in enumerate(offsets):
            shape = list(spatial_ones) + [1]
            shape[a] = -1
            inside = inside & tables[a][1][:, t].view(shape)
        masks.append(inside.expand(*(ax.length for ax in axes), k_last).reshape(n_q, 1, k_last))
        if bias is not None:
            r = bias
            for a, t in enumerate(offsets):
                r = r.index_select(1 + a, tables[a][2][:, t])
            r = r.index_select(n, tables[-1][2].flatten())                       # [h, .., L_last * k_last]
            logits[-1] = logits[-1] * scale + r.reshape(h, n_q, k_last).transpose(0, 1)
        else:
            logits[-1] = logits[-1] * scale
    scores = torch.cat(logits, dim=-1)                                           # [B, N, h, M]
    valid = torch.cat(masks, dim=-1)                                             # [N, 1, M]
    attn = masked_softmax(scores, valid, compute, dropout_p)                     # zero rows without keys
    out = None
    for i, offsets in enumerate(lead):
        weights = attn[..., i * k_last:(i + 1) * k_last].transpose(2, 3).unsqueeze(-1)  # [B, N, k_last, h, 1]
        part = (weights * block(v, offsets)).sum(2)
        out = part if out is None else out + part
    return out.to(query.dtype).reshape(query.shape)
