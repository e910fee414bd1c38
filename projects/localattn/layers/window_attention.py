"""Window self-attention with a Swin-style relative-position bias (QnA-ViT's MSA), channels-last.

**Small-input / padding policy** (:func:`window_partition`): the window along each axis is
``min(w, H)`` (resp. ``min(w, W)``), so a map smaller than the window is attended globally as one
window; otherwise the map is zero-padded at the bottom/right to a multiple of the window,
partitioned, and the padded KEYS are masked with ``-inf`` (added to the bias), so real tokens never
attend padding; padded queries are computed and dropped by :func:`window_merge`. The result is
identical to a partition whose border windows are simply truncated. A stage partitions once and
runs all its blocks on the same windows (MLP and LayerNorm are per token).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.caching import table_cache

__all__ = ['WindowSelfAttention', 'window_partition', 'window_merge', 'relative_position_index']


@table_cache(maxsize=64)
def relative_position_index(window_hw: tuple[int, int], window_size: int,
                            device: Optional[torch.device] = None) -> Tensor:
    """``[N, N]`` index into a ``(2w-1)^2`` table for a ``wh x ww`` window (``wh, ww <= w``); cached.

    Swin convention: ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``, ``(dy, dx)`` = query minus key
    position; tokens flattened row-major.
    """
    wh, ww = window_hw
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device),
                            indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative-position bias table.

    ``qkv`` is ``nn.Linear(C, 3C, bias=False)`` with outputs ordered (q | k | v, head, dim);
    ``proj`` is ``nn.Linear(C, C, bias=False)``; ``relative_position_bias_table`` is
    ``[(2w - 1)^2, heads]`` (init 0). Logits are ``q . k / sqrt(d) + bias (+ mask)``, computed
    with 4-D :func:`torch.nn.functional.scaled_dot_product_attention` (exportable to ONNX).

    Shape:
        ``[B, nW, N, C]`` windows of ``N = wh * ww`` tokens (row-major, :func:`window_partition`)
        -> the same shape.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if num_heads < 1 or embed_dims % num_heads:
            raise ValueError(f'num_heads ({num_heads}) must be positive and divide embed_dims '
                             f'({embed_dims})')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=False)
        self.proj = nn.Linear(embed_dims, embed_dims, bias=False)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))

    def relative_position_bias(self, window_hw: tuple[int, int]) -> Tensor:
        """``[heads, N, N]`` bias for a ``wh x ww`` window."""
        index = relative_position_index(window_hw, self.window_size,
                                        self.relative_position_bias_table.device)
        bias = self.relative_position_bias_table[index.flatten()]
        num_tokens = window_hw[0] * window_hw[1]
        return bias.view(num_tokens, num_tokens, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, window_hw: tuple[int, int],
                key_mask: Optional[Tensor] = None) -> Tensor:
        """Args:
            x: ``[B, nW, N, C]`` windows of ``N = wh * ww`` tokens (row-major).
            window_hw: ``(wh, ww)``.
            key_mask: optional additive ``[nW, 1, 1, N]`` mask (0 / -inf for padded keys).
        """
        batch, num_windows, num_tokens, _ = x.shape
        qkv = self.qkv(x).view(batch * num_windows, num_tokens, 3, self.num_heads, self.head_dims)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)               # [B * nW, h, N, d]
        mask = self.relative_position_bias(window_hw)                  # [h, N, N]
        if key_mask is not None:                                       # [B * nW, h, N, N]
            mask = (mask + key_mask).expand(batch, -1, -1, -1, -1).flatten(0, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        out = out.transpose(1, 2).reshape(batch, num_windows, num_tokens, self.embed_dims)
        return self.proj(out)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}')


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple, Optional[Tensor]]:
    """Pad and split ``[B, H, W, C]`` into windows (see the module docstring for the policy).

    Returns:
        windows ``[B, nW, wh * ww, C]``, ``(H, W, wh, ww, nh, nw)`` for :func:`window_merge`, and
        the additive key mask ``[nW, 1, 1, wh * ww]`` (None without padding).
    """
    batch, height, width, channels = x.shape
    wh, ww = min(window_size, height), min(window_size, width)
    pad_h, pad_w = (-height) % wh, (-width) % ww
    key_mask = None
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        valid = torch.zeros(height + pad_h, width + pad_w, dtype=torch.bool, device=x.device)
        valid[:height, :width] = True
        valid = valid.view((height + pad_h) // wh, wh, (width + pad_w) // ww, ww)
        valid = valid.permute(0, 2, 1, 3).reshape(-1, 1, 1, wh * ww)
        key_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
        key_mask = key_mask.masked_fill(~valid, float('-inf'))
    nh, nw = (height + pad_h) // wh, (width + pad_w) // ww
    windows = x.view(batch, nh, wh, nw, ww, channels).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(batch, nh * nw, wh * ww, channels)
    return windows, (height, width, wh, ww, nh, nw), key_mask


def window_merge(windows: Tensor, layout: tuple) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, N, C]`` -> ``[B, H, W, C]``, unpadded."""
    height, width, wh, ww, nh, nw = layout
    batch, _, _, channels = windows.shape
    x = windows.view(batch, nh, nw, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, nh * wh, nw * ww, channels)
    return x[:, :height, :width].contiguous()
