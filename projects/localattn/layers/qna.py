"""QnA layer ("Learned Queries for Efficient Local Attention", CVPR 2022) on channels-last maps."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.qna import qna2d

__all__ = ['QnA2d']


def _check_config(in_channels: int, out_channels: int, num_heads: int, kernel_size: int,
                  stride: int, num_queries: int) -> None:
    """Raise ``ValueError`` naming the offending argument of :class:`QnA2d`."""
    for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                        ('num_heads', num_heads), ('num_queries', num_queries)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if out_channels % num_heads != 0:
        raise ValueError(f'out_channels ({out_channels}) must be divisible by num_heads ({num_heads})')
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
    if stride not in (1, 2):
        raise ValueError(f'stride must be 1 or 2, got {stride!r}')


class QnA2d(nn.Module):
    """QnA: ``L`` learned queries attend over ``k x k`` windows (masked at the image border).

    The attention width is ``C = out_channels`` (as in the Flax layer, whose stride-2 downsampler
    outputs twice its input width with twice the heads). Per query ``l`` and head ``m`` the logits need
    no keys: ``s_lm(j) = x_j . (W_k^(m) q_hat_lm)`` with ``q_hat`` L2-normalised per (query, head) and
    divided by ``sqrt(head_dim)``, so the query is folded into ``W_k`` and the logits are ONE
    projection from ``C_in`` to ``L * heads`` channels. Then
    ``z_m(i) = sum_l sum_o w_lm(o) softmax_o(s_lm(j) + b_lm(o)) v_m(j)`` (:func:`localattn.ops.qna2d`)
    and ``y = proj(concat_m z_m)``.

    Args:
        in_channels: ``C_in`` of the input.
        out_channels: attention width ``C`` and output channels.
        num_heads: heads ``h``; ``out_channels`` must be divisible by it.
        kernel_size: odd window size ``k``.
        stride: 1, or 2 to downsample (output ``ceil(H / 2) x ceil(W / 2)``).
        num_queries: learned queries ``L`` per head (2 in every released QnA-ViT).
        qkv_bias: bias in the ``key`` and ``value`` projections.
        rpb_init_std: std of the normal init of ``rpb`` (0: zeros, as QnA-ViT).
        attn_scale_init_std: std of the normal init of ``attn_scale``.
        proj_bias: bias in the output projection (the Flax layer has none).

    Parameters (names are a contract with the backbones and the checkpoint converter):
        ``query`` ``[L, C]`` viewed ``(L, heads, head_dim)``, init N(0, 1) (only its direction
        matters: it is L2-normalised in the forward); ``key`` and ``value`` ``nn.Linear(C_in, C)``;
        ``rpb`` and ``attn_scale`` ``[L, heads, k, k]`` indexed by window offset ``(dy, dx)``;
        ``proj`` ``nn.Linear(C, C)``.

    Shape:
        ``[B, H, W, C_in]`` -> ``[B, ceil(H / stride), ceil(W / stride), C]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_heads: int, kernel_size: int = 3,
                 stride: int = 1, num_queries: int = 2, qkv_bias: bool = False,
                 rpb_init_std: float = 0., attn_scale_init_std: float = 0.02,
                 proj_bias: bool = False) -> None:
        super().__init__()
        _check_config(in_channels, out_channels, num_heads, kernel_size, stride, num_queries)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = num_heads
        self.head_dim = out_channels // num_heads
        self.kernel_size = kernel_size
        self.stride = stride
        self.num_queries = num_queries
        self.rpb_init_std = rpb_init_std
        self.attn_scale_init_std = attn_scale_init_std
        table = (num_queries, num_heads, kernel_size, kernel_size)
        self.query = nn.Parameter(torch.empty(num_queries, out_channels))
        self.key = nn.Linear(in_channels, out_channels, bias=qkv_bias)
        self.value = nn.Linear(in_channels, out_channels, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.empty(table))
        self.attn_scale = nn.Parameter(torch.empty(table))
        self.proj = nn.Linear(out_channels, out_channels, bias=proj_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``query`` N(0, 1), ``rpb`` N(0, rpb_init_std^2) (zeros by default), ``attn_scale``
        N(0, attn_scale_init_std^2); the linear layers keep PyTorch's default init."""
        nn.init.normal_(self.query, std=1.0)
        nn.init.normal_(self.rpb, std=self.rpb_init_std)
        nn.init.normal_(self.attn_scale, std=self.attn_scale_init_std)
        for linear in (self.key, self.value, self.proj):
            linear.reset_parameters()

    def logit_projection(self) -> tuple[Tensor, Tensor | None]:
        """Fold the normalised queries into ``W_k``.

        Returns:
            weight ``[L * heads, C_in]`` (rows ordered (query, head)) and bias ``[L * heads]`` or None.
        """
        shape = (self.num_queries, self.num_heads, self.head_dim)
        query = F.normalize(self.query.view(shape), dim=-1) / math.sqrt(self.head_dim)
        key_weight = self.key.weight.view(self.num_heads, self.head_dim, self.in_channels)
        weight = torch.einsum('lmd,mdc->lmc', query, key_weight).reshape(-1, self.in_channels)
        if self.key.bias is None:
            return weight, None
        bias = torch.einsum('lmd,md->lm', query, self.key.bias.view(shape[1:])).reshape(-1)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C_in]`` -> ``[B, H', W', C]``."""
        if x.dim() != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f'x must be [B, H, W, {self.in_channels}] (channels-last), '
                             f'got shape {tuple(x.shape)}')
        batch, height, width, _ = x.shape
        logits = F.linear(x, *self.logit_projection())
        logits = logits.view(batch, height, width, self.num_queries, self.num_heads)
        value = self.value(x).view(batch, height, width, self.num_heads, self.head_dim)
        out = qna2d(logits, value, self.rpb, self.attn_scale,
                    kernel_size=self.kernel_size, stride=self.stride)
        return self.proj(out.flatten(3))

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, '
                f'num_heads={self.num_heads}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'num_queries={self.num_queries}')
