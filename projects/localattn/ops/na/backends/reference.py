"""Reference backend: explicit neighbour lists and a gather. Obviously right, slow, memory hungry."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..indexing import AxisSpec, axis_windows


def neighbour_table(axes: tuple[AxisSpec, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Explicit neighbour sets of every query, in row-major flat indices.

    Returns ``(index, valid, rel)``, each ``[N, M]`` with ``N = prod(lengths)`` and
    ``M = prod(kernels)``: the flat key index (0 where invalid), whether that window slot holds a
    key, and the flat RPB index into a ``[2k_1 - 1, ..., 2k_n - 1]`` table.
    """
    n = len(axes)
    index = valid = rel = None
    for a, ax in enumerate(axes):
        win = axis_windows(ax)
        t = torch.arange(ax.kernel)
        keys = win.first[:, None] + ax.dilation * t  # [L, k]
        ok = t < win.count[:, None]
        r = win.rel[:, None] + t
        shape = [1] * (2 * n)
        shape[a], shape[n + a] = ax.length, ax.kernel
        keys, ok, r = (x.view(shape) for x in (keys, ok, r))
        if index is None:
            index, valid, rel = keys, ok, r
        else:
            index = index * ax.length + keys
            valid = valid & ok
            rel = rel * (2 * ax.kernel - 1) + r
    n_q = math.prod([ax.length for ax in axes])  # lists: dynamo cannot pass generators to math.prod
    n_k = math.prod([ax.kernel for ax in axes])
    full = [ax.length for ax in axes] + [ax.kernel for ax in axes]
    valid = valid.expand(full).reshape(n_q, n_k)
    index, rel = (x.expand(full).reshape(n_q, n_k) for x in (index, rel))
    return torch.where(valid, index, 0), valid, torch.where(valid, rel, 0)


def masked_softmax(logits: Tensor, valid: Tensor, compute: torch.dtype, dropout_p: float) -> Tensor:
    """Softmax over the last axis of ``logits`` (of dtype ``compute``) restricted to the ``valid``
    slots, with dropout ``dropout_p`` on the weights; rows without a valid slot get zeros."""
    logits = logits.masked_fill(~valid, torch.finfo(compute).min)
    attn = logits.softmax(-1) * valid  # zero rows for queries without keys
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    return attn


def na_reference(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...],
                 rpb: Tensor | None, scale: float, dropout_p: float = 0.0) -> Tensor:
    """Neighbourhood attention by gathering every query's neighbours.

    The arguments and result below are the contract of every backend (``unrolled``, ``tiles``, ...).

    Args:
        query, key, value: ``[B, *spatial, heads, head_dim]``.
        axes: one :class:`AxisSpec` per spatial axis.
        rpb: ``[heads, 2k_1 - 1, ..., 2k_n - 1]`` or ``None``.
        scale: logit scale.
        dropout_p: dropout probability on the attention weights.

    Returns:
        ``[B, *spatial, heads, head_dim]``; queries without any valid key get zeros.
    """
    b, h, c = query.shape[0], query.shape[-2], query.shape[-1]
    compute = torch.promote_types(query.dtype, torch.float32)
    index, valid, rel = (x.to(query.device) for x in neighbour_table(axes))
    n_q, n_k = index.shape
    q = query.reshape(b, n_q, h, c).to(compute)
    k = key.reshape(b, n_q, h, c).to(compute)[:, index]  # [B, N, M, h, c]
    v = value.reshape(b, n_q, h, c).to(compute)[:, index]
    logits = torch.einsum('bnhc,bnmhc->bhnm', q, k) * scale
    if rpb is not None:
        logits = logits + rpb.reshape(h, -1).to(compute)[:, rel]
    attn = masked_softmax(logits, valid, compute, dropout_p)
    out = torch.einsum('bhnm,bnmhc->bnhc', attn, v)
    return out.to(query.dtype).reshape(query.shape)
