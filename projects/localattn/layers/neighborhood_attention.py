"""2-D neighbourhood-attention layer (NAT / DiNAT) on channels-last maps."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from ..ops.na import BACKENDS, na2d


def short_axis(length: int, kernel: int, dilation: int) -> tuple[int, int, int]:
    """``(kernel, dilation, padding)`` that one axis of length ``length`` runs with.

    Unchanged when ``kernel * dilation <= length``; otherwise every dilation group along the axis is
    attended whole: kernel ``n = ceil(length / dilation)`` (the largest group), the axis padded to
    ``n * dilation`` so that every group holds ``n`` positions; ``n == 1``: kernel 1, dilation 1.
    """
    if kernel * dilation <= length:
        return kernel, dilation, 0
    n = -(-length // dilation)
    if n == 1:
        return 1, 1, 0
    return n, dilation, n * dilation - length


class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D neighbourhood attention with relative positional bias, ``[B, H, W, C] -> [B, H, W, C]``.

    Parameter names follow the official NAT checkpoints: ``qkv`` (``Linear(C, 3C)``, output ordered
    ``(q|k|v, head, head_dim)``), ``rpb`` (``[heads, 2k_H - 1, 2k_W - 1]``) and ``proj``.

    Small maps: along an axis shorter than ``kernel_size * dilation`` each query attends to *all* the
    keys of its dilation group along that axis (full attention when ``dilation == 1``), with the
    relative positional bias of their offsets. This is computed without padding to
    ``kernel_size * dilation``: the largest group has ``n = ceil(L / d) < kernel_size`` positions, so
    the axis runs with kernel ``n`` (the bias table sliced to its central ``2n - 1`` offsets), padded
    at its end to ``n * d`` (less than ``d`` extra positions, none when ``d`` divides ``L``) and the
    padded positions excluded as keys (``valid_size`` of :func:`~localattn.ops.na.na2d`) and
    cropped from the output; when ``n == 1`` the axis has kernel 1 (each query sees its own row or
    column only). Real pixels never attend padded ones.

    Args:
        embed_dim: channels ``C``.
        num_heads: number of heads; must divide ``C``.
        kernel_size: window size (int or ``(k_H, k_W)``).
        dilation: dilation (int or ``(d_H, d_W)``).
        qkv_bias: bias in the qkv projection.
        rpb: learn a relative positional bias.
        attn_drop: dropout probability on the attention weights (training only; passed to
            :func:`~localattn.ops.na.na2d` as ``dropout_p``).
        proj_drop: dropout after the output projection.
        backend: NA backend, see :func:`~localattn.ops.na.na2d`.
    """

    def __init__(self, embed_dim: int, num_heads: int, kernel_size: int | tuple[int, int],
                 dilation: int | tuple[int, int] = 1, qkv_bias: bool = True, rpb: bool = True,
                 attn_drop: float = 0., proj_drop: float = 0., backend: str = 'auto') -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f'num_heads ({num_heads}) must be positive and divide embed_dim ({embed_dim})')
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.kernel_size, self.dilation = _pair(kernel_size), _pair(dilation)
        self.backend = backend
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        if rpb:
            self.rpb = nn.Parameter(torch.empty(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02)
        else:
            self.register_parameter('rpb', None)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def window(self, height: int, width: int) -> tuple[tuple[int, ...], ...]:
        """``(kernel, dilation, padding)`` pairs (H, W) that a ``height x width`` map runs with
        (:func:`short_axis` per axis)."""
        return tuple(zip(*(short_axis(int(length), k, d) for length, k, d in
                           zip((height, width), self.kernel_size, self.dilation))))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        b, height, width, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).view(b, height, width, 3, heads, c // heads)
        kernel, dilation, pads = self.window(height, width)
        if pads[0] or pads[1]:
            qkv = F.pad(qkv, (0, 0, 0, 0, 0, 0, 0, pads[1], 0, pads[0]))
        rpb = self.rpb
        if rpb is not None and kernel != self.kernel_size:  # central 2n - 1 offsets of short axes
            (kh, kw), (nh, nw) = self.kernel_size, kernel
            rpb = rpb[:, kh - nh:kh + nh - 1, kw - nw:kw + nw - 1]
        q, k, v = qkv.unbind(3)
        out = na2d(q, k, v, kernel, dilation=dilation, rpb=rpb,
                   valid_size=(int(height), int(width)) if pads[0] or pads[1] else None,
                   dropout_p=self.attn_drop if self.training else 0.0, backend=self.backend)
        if pads[0] or pads[1]:
            out = out[:, :height, :width]
        return self.proj_drop(self.proj(out.reshape(b, height, width, c)))

    def extra_repr(self) -> str:
        return (f'embed_dim={self.embed_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'dilation={self.dilation}, rpb={self.rpb is not None}, attn_drop={self.attn_drop}, '
                f'backend={self.backend!r}')
