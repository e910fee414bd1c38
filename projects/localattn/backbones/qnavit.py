"""QnA-ViT ("Learned Queries for Efficient Local Attention", Arar et al., CVPR 2022) as an
OpenMMLab backbone.

Layout (one readable file, timm-style): architecture table, window self-attention, the two block
types, the stage and the backbone. Every block works on channels-last maps ``[B, H, W, C]``; the
backbone returns NCHW feature maps.

Architecture (stage ``s``, width ``C_s = embed_dims * 2**s``)::

    stem: 4x4 stride-4 conv, no bias, no norm (padded like Flax 'SAME' when H or W is not a
          multiple of 4: output ceil(H / 4) x ceil(W / 4))
    stage s: [msa_depths[s] window self-attention blocks]
             -> [qna_depths[s] QnA blocks, stride 1]
             -> feature s (dense prediction output, through its own LayerNorm ``norm{s}``)
             -> [1 QnA block, stride 2, C_s -> 2 C_s, 2x heads] (every stage but the last)

Blocks are pre-norm with LayerNorm(eps=1e-6), MLP ratio 4 and tanh-approximated GELU (Flax's
``nn.gelu`` default, used by the official MLPs), no layer scale::

    x = skip(x) + DropPath(mixer(LN(x)))      # skip = identity, or 1x1 stride-2 conv (downsampler)
    x = x + DropPath(MLP(LN(x)))

As in the official code the stride-2 block applies stochastic depth to its MLP branch only (its
mixer branch has a learnable skip), and the drop-path rate grows linearly over all blocks in
forward order (MSA, QnA, downsampler, ..., next stage).

Self-attention blocks (MSA) use non-overlapping ``w x w`` windows (``window_sizes``: 14 at stride 16
and 7 at stride 32 in the released models, so at 224x224 input every window covers the whole map
and the attention is global) with a Swin-style ``(2w-1)^2`` relative-position bias table (init 0)
and no qkv/out bias.

**Small-input / padding policy** for the MSA stage: the window along each axis is
``min(w, H)`` (resp. ``min(w, W)``), so a map smaller than the window is attended globally as one
window; otherwise the map is zero-padded at the bottom/right to a multiple of the window,
partitioned, and the padded KEYS are masked with ``-inf`` (added to the bias), so real tokens never
attend padding; padded queries are computed and dropped. The result is identical to a
partition whose border windows are simply truncated. Padding and partitioning happen once per
stage: all MSA blocks of a stage run on the same windows (MLP/LN are per token), exactly like the
official LSAStage, which partitions once before its blocks.

Stride-2 QnA blocks give ``ceil(H / 2) x ceil(W / 2)`` maps, so any input size works (odd,
non-square, or as small as one pixel per stage).
"""
from __future__ import annotations

import copy
import math
import sys
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, kaiming_init
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention

from ..analysis.complexity import register_function_counter
from ..layers import QnA2d
from ..ops.caching import table_cache

__all__ = ['QnAViT']

#: Released architectures (paper Table / official ``qna_vit_*`` configs). ``qna_heads[s]`` are the
#: heads of the stride-1 QnA blocks of stage ``s`` (the stride-2 block of that stage uses twice as
#: many); ``qna_heads`` of the last stage is unused by the released models (no QnA block there).
#: ``drop_path_rate`` is the value used for ImageNet training (the default of the argument).
ARCH_SETTINGS = {
    'tiny': dict(embed_dims=64, qna_depths=(2, 3, 2, 0), msa_depths=(0, 0, 4, 2),
                 qna_heads=(8, 16, 32, 64), msa_heads=(2, 4, 8, 16), qna_kernel_size=3,
                 window_sizes=(7, 7, 14, 7), drop_path_rate=0.05),
    'tiny-7x7': dict(embed_dims=64, qna_depths=(2, 3, 2, 0), msa_depths=(0, 0, 4, 2),
                     qna_heads=(8, 16, 32, 64), msa_heads=(2, 4, 8, 16), qna_kernel_size=7,
                     window_sizes=(7, 7, 14, 7), drop_path_rate=0.05),
    'small': dict(embed_dims=64, qna_depths=(2, 3, 6, 0), msa_depths=(0, 0, 12, 2),
                  qna_heads=(8, 16, 32, 64), msa_heads=(2, 4, 8, 16), qna_kernel_size=3,
                  window_sizes=(7, 7, 14, 7), drop_path_rate=0.2),
    'base': dict(embed_dims=96, qna_depths=(2, 3, 6, 0), msa_depths=(0, 0, 12, 2),
                 qna_heads=(6, 12, 24, 48), msa_heads=(3, 6, 12, 24), qna_kernel_size=3,
                 window_sizes=(7, 7, 14, 7), drop_path_rate=0.5),
}
_ARCH_REQUIRED = ('embed_dims', 'qna_depths', 'msa_depths', 'qna_heads', 'msa_heads',
                  'window_sizes')
_ARCH_DEFAULTS = dict(qna_kernel_size=3, num_queries=2, mlp_ratio=4, drop_path_rate=0.)

#: Substrings for ``paramwise_cfg.custom_keys`` that select exactly the parameters the official
#: recipe trains without weight decay: LayerNorms, MSA bias tables, and QnA ``rpb``,
#: ``attn_scale`` and ``query``.
NO_DECAY_KEYS = ('norm', 'relative_position_bias_table', '.rpb', '.attn_scale', '.query')


def _is_pos_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return a full, validated architecture dict for ``arch`` (a name of :data:`ARCH_SETTINGS`
    or a dict with the keys of :data:`_ARCH_REQUIRED`, optionally ``qna_kernel_size``,
    ``num_queries``, ``mlp_ratio`` and ``drop_path_rate``). Raises ``ValueError``."""
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ValueError(f'QnAViT: unknown arch {arch!r}; choose one of '
                             f'{sorted(ARCH_SETTINGS)} or pass a dict')
        arch = ARCH_SETTINGS[arch]
    if not isinstance(arch, dict):
        raise ValueError(f'QnAViT: arch must be a str or a dict, got {type(arch).__name__}')
    missing = [key for key in _ARCH_REQUIRED if key not in arch]
    unknown = sorted(set(arch) - set(_ARCH_REQUIRED) - set(_ARCH_DEFAULTS))
    if missing or unknown:
        raise ValueError(f'QnAViT: arch dict is missing keys {missing} / has unknown keys '
                         f'{unknown}; required {list(_ARCH_REQUIRED)}, optional '
                         f'{list(_ARCH_DEFAULTS)}')
    cfg = {**_ARCH_DEFAULTS, **copy.deepcopy(arch)}
    if not _is_pos_int(cfg['embed_dims']):
        raise ValueError(f'QnAViT: arch embed_dims must be a positive int (the width of stage 0; '
                         f'stage s has embed_dims * 2**s), got {cfg["embed_dims"]!r}')
    lists = ('qna_depths', 'msa_depths', 'qna_heads', 'msa_heads', 'window_sizes')
    for key in lists:
        if not isinstance(cfg[key], (list, tuple)) or len(cfg[key]) == 0:
            raise ValueError(f'QnAViT: arch {key} must be a non-empty list, got {cfg[key]!r}')
        cfg[key] = tuple(cfg[key])
    num_stages = len(cfg['qna_depths'])
    lengths = {key: len(cfg[key]) for key in lists}
    if len(set(lengths.values())) != 1:
        raise ValueError(f'QnAViT: arch lists must all have one entry per stage, got lengths '
                         f'{lengths}')
    for key in ('qna_depths', 'msa_depths'):
        if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in cfg[key]):
            raise ValueError(f'QnAViT: arch {key} must hold non-negative ints, got {cfg[key]}')
    for key in ('qna_kernel_size', 'num_queries', 'mlp_ratio'):
        if not _is_pos_int(cfg[key]):
            raise ValueError(f'QnAViT: arch {key} must be a positive int, got {cfg[key]!r}')
    if cfg['qna_kernel_size'] % 2 == 0:
        raise ValueError(f'QnAViT: arch qna_kernel_size must be odd, got {cfg["qna_kernel_size"]}')
    if not isinstance(cfg['drop_path_rate'], (int, float)) or not 0 <= cfg['drop_path_rate'] < 1:
        raise ValueError(f'QnAViT: drop_path_rate must be in [0, 1), got {cfg["drop_path_rate"]!r}')
    for s in range(num_stages):
        dims = cfg['embed_dims'] * 2**s
        uses_qna = cfg['qna_depths'][s] > 0 or s < num_stages - 1
        if uses_qna and (not _is_pos_int(cfg['qna_heads'][s]) or dims % cfg['qna_heads'][s]):
            raise ValueError(f'QnAViT: stage {s} width {dims} must be divisible by qna_heads[{s}] '
                             f'(a positive int), got {cfg["qna_heads"][s]!r}')
        if cfg['msa_depths'][s] > 0:
            if not _is_pos_int(cfg['msa_heads'][s]) or dims % cfg['msa_heads'][s]:
                raise ValueError(f'QnAViT: stage {s} width {dims} must be divisible by '
                                 f'msa_heads[{s}] (a positive int), got {cfg["msa_heads"][s]!r}')
            if not _is_pos_int(cfg['window_sizes'][s]):
                raise ValueError(f'QnAViT: window_sizes[{s}] must be a positive int, got '
                                 f'{cfg["window_sizes"][s]!r}')
    return cfg


# --------------------------------------------------------------------------------------------
# Window self-attention
# --------------------------------------------------------------------------------------------
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
    with :func:`torch.nn.functional.scaled_dot_product_attention`.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int) -> None:
        super().__init__()
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
        # 4-D SDPA (exportable to ONNX); called through this module's global so that the FLOP
        # counter can wrap it (see below)
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        out = out.transpose(1, 2).reshape(batch, num_windows, num_tokens, self.embed_dims)
        return self.proj(out)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}')


def sdpa_macs(query: Tensor, key: Tensor, value: Tensor, *args, **kwargs) -> int:
    """MACs of one attention call: ``q @ k^T`` plus ``attn @ v`` over every (padded) window,
    ``batch * N * M * (d_qk + d_v)``; softmax, bias and mask additions are not counted."""
    batch = math.prod(query.shape[:-2])
    return batch * query.shape[-2] * key.shape[-2] * (query.shape[-1] + value.shape[-1])


# mmengine's tracer does not count ``aten::scaled_dot_product_attention``: count it analytically
# in :func:`localattn.analysis.complexity.count_flops_params`.
register_function_counter(sys.modules[__name__], 'scaled_dot_product_attention', sdpa_macs,
                          'window_self_attention', module_types=(WindowSelfAttention, ))


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


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
def _ffn(embed_dims: int, mlp_ratio: int, drop_path: float, act_cfg: dict) -> FFN:
    """MLP ``Linear(C, rC) -> act -> Linear(rC, C)`` with DropPath and the residual built in."""
    return FFN(embed_dims=embed_dims, feedforward_channels=embed_dims * mlp_ratio, num_fcs=2,
               act_cfg=act_cfg, ffn_drop=0.,
               dropout_layer=dict(type='DropPath', drop_prob=drop_path) if drop_path > 0 else None,
               add_identity=True)


class MSABlock(nn.Module):
    """Pre-norm window self-attention block on windows ``[B, nW, N, C]``."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, mlp_ratio: int = 4,
                 drop_path: float = 0., norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU', approximate='tanh')) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = WindowSelfAttention(embed_dims, num_heads, window_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = _ffn(embed_dims, mlp_ratio, drop_path, act_cfg)

    def forward(self, x: Tensor, window_hw: tuple[int, int],
                key_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), window_hw, key_mask))
        return self.ffn(self.norm2(x), identity=x)


class QnABlock(nn.Module):
    """Pre-norm QnA block on channels-last maps ``[B, H, W, C_in] -> [B, H', W', C_out]``.

    ``stride=2`` makes it the stage downsampler: the mixer outputs ``out_channels`` (twice the
    input in QnA-ViT) and the skip path is ``skip``, a 1x1 stride-2 conv without bias.
    """

    def __init__(self, in_channels: int, out_channels: int, num_heads: int, kernel_size: int = 3,
                 stride: int = 1, num_queries: int = 2, mlp_ratio: int = 4, drop_path: float = 0.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU', approximate='tanh')) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, in_channels)[1]
        self.attn = QnA2d(in_channels, out_channels, num_heads, kernel_size=kernel_size,
                          stride=stride, num_queries=num_queries, qkv_bias=False)
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            # Official QnA-ViT: no stochastic depth on a mixer branch that has a learnable skip.
            self.drop_path = nn.Identity()
        else:
            self.skip = None
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm_layer(norm_cfg, out_channels)[1]
        self.ffn = _ffn(out_channels, mlp_ratio, drop_path, act_cfg)

    def forward(self, x: Tensor) -> Tensor:
        if self.skip is None:
            shortcut = x
        else:
            shortcut = self.skip(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = shortcut + self.drop_path(self.attn(self.norm1(x)))
        return self.ffn(self.norm2(x), identity=x)


class QnAViTStage(nn.Module):
    """``msa_blocks`` -> ``qna_blocks`` -> (feature) -> ``downsample`` (or None)."""

    def __init__(self, embed_dims: int, msa_depth: int, msa_heads: int, window_size: int,
                 qna_depth: int, qna_heads: int, qna_kernel_size: int, num_queries: int,
                 downsample: bool, drop_paths: Sequence[float], mlp_ratio: int = 4,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU', approximate='tanh'),
                 with_cp: bool = False) -> None:
        super().__init__()
        assert len(drop_paths) == msa_depth + qna_depth + int(downsample)
        common = dict(mlp_ratio=mlp_ratio, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.window_size = window_size
        self.with_cp = with_cp
        self.msa_blocks = nn.ModuleList(
            MSABlock(embed_dims, msa_heads, window_size, drop_path=drop_paths[i], **common)
            for i in range(msa_depth))
        self.qna_blocks = nn.ModuleList(
            QnABlock(embed_dims, embed_dims, qna_heads, qna_kernel_size, stride=1,
                     num_queries=num_queries, drop_path=drop_paths[msa_depth + i], **common)
            for i in range(qna_depth))
        self.downsample = None
        if downsample:
            self.downsample = QnABlock(embed_dims, 2 * embed_dims, 2 * qna_heads, qna_kernel_size,
                                       stride=2, num_queries=num_queries,
                                       drop_path=drop_paths[-1], **common)

    def _run(self, block: nn.Module, *args) -> Tensor:
        if self.with_cp and args[0].requires_grad:
            return cp.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, H, W, C]`` -> (feature ``[B, H, W, C]``, output for the next stage)."""
        if len(self.msa_blocks):
            windows, layout, key_mask = window_partition(x, self.window_size)
            for block in self.msa_blocks:
                windows = self._run(block, windows, layout[2:4], key_mask)
            x = window_merge(windows, layout)
        for block in self.qna_blocks:
            x = self._run(block, x)
        feature = x
        if self.downsample is not None:
            x = self._run(self.downsample, x)
        return feature, x


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------
class QnAViT(BaseModule):
    """QnA-ViT backbone (see the module docstring for the architecture).

    Args:
        arch: ``'tiny'``, ``'tiny-7x7'``, ``'small'``, ``'base'`` (:data:`ARCH_SETTINGS`) or a dict
            with ``embed_dims`` (int, width of stage 0), per-stage lists ``qna_depths``,
            ``msa_depths``, ``qna_heads``, ``msa_heads``, ``window_sizes`` and optionally
            ``qna_kernel_size`` (3), ``num_queries`` (2), ``mlp_ratio`` (4), ``drop_path_rate`` (0).
        in_channels: image channels.
        out_indices: stages whose features are returned (negative indices allowed). Feature ``i``
            has ``embed_dims * 2**i`` channels at stride ``4 * 2**i`` and goes through its own
            LayerNorm ``norm{i}``. For stages with a downsampler it is taken BEFORE that block.
        drop_path_rate: maximum stochastic-depth rate (linear over all blocks); None takes the
            arch's ImageNet value (0.05 / 0.05 / 0.2 / 0.5).
        frozen_stages: -1 freezes nothing; ``k >= 0`` freezes the stem and stages ``0..k-1``
            (with their downsamplers and output norms): no grad and eval mode, also after
            ``train()`` (mmdet ResNet/Swin convention).
        with_cp: gradient checkpointing of every block.
        norm_cfg: norm of the blocks and outputs (LayerNorm eps 1e-6 as the release).
        act_cfg: MLP activation (tanh-approximated GELU as Flax's ``nn.gelu`` default).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads a checkpoint laid out as
            this module: ``state_dict``/``module.``/``backbone.`` wrappers are stripped (an
            explicit ``prefix`` is honoured), MSA bias tables are resized (bicubic) when the
            window differs, other shape mismatches are skipped, and missing/unexpected/skipped
            keys are reported. Otherwise weights get the release's init: Linear and Conv lecun
            normal (std ``1/sqrt(fan_in)``), zero biases, LayerNorm (1, 0), zero bias tables,
            and ``QnA2d``'s own init for ``query``, ``rpb`` and ``attn_scale``.

    Classification: with ``out_indices=(3,)`` the official head (LayerNorm -> global average pool
    -> Linear) is ``norm3`` + mmpretrain's ``GlobalAveragePooling`` neck + ``LinearClsHead``; the
    Flax converter maps the head's LayerNorm to ``backbone.norm3``.

    Weight decay: the official recipe decays neither norms nor position biases, QnA attention
    scales or queries. The parameter names make that reachable with::

        paramwise_cfg=dict(custom_keys={
            'norm': dict(decay_mult=0.),                          # every LayerNorm
            'relative_position_bias_table': dict(decay_mult=0.),  # MSA bias tables
            '.rpb': dict(decay_mult=0.),                          # QnA relative bias
            '.attn_scale': dict(decay_mult=0.),                   # QnA attention-scale weights
            '.query': dict(decay_mult=0.),                        # QnA learned queries
        })

    (:data:`NO_DECAY_KEYS`; custom keys are substrings of the full parameter names, so ``'norm'``
    also catches norms in necks and heads, as in the Swin configs.)

    Shape:
        ``[B, in_channels, H, W]`` -> tuple (one per ``out_indices``) of ``[B, C_i, H_i, W_i]`` with
        ``C_i = embed_dims * 2**i``, ``H_0 = ceil(H / 4)`` and ``H_i = ceil(H_{i-1} / 2)`` (same
        for W).
    """

    arch_settings = ARCH_SETTINGS
    no_decay_keys = NO_DECAY_KEYS

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: Optional[float] = None, frozen_stages: int = -1,
                 with_cp: bool = False, norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU', approximate='tanh'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = resolve_arch(arch)
        num_stages = len(self.arch['qna_depths'])
        self.num_stages = num_stages
        if not _is_pos_int(in_channels):
            raise ValueError(f'QnAViT: in_channels must be a positive int, got {in_channels!r}')
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        if not isinstance(out_indices, (list, tuple)) or not out_indices or any(
                not isinstance(i, int) or not -num_stages <= i < num_stages for i in out_indices):
            raise ValueError(f'QnAViT: out_indices must be a non-empty sequence of ints in '
                             f'[-{num_stages}, {num_stages}), got {out_indices!r}')
        self.out_indices = tuple(sorted({i % num_stages for i in out_indices}))
        if drop_path_rate is None:
            drop_path_rate = self.arch['drop_path_rate']
        if not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
            raise ValueError(f'QnAViT: drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        self.drop_path_rate = float(drop_path_rate)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'QnAViT: frozen_stages must be an int in [-1, {num_stages}], got '
                             f'{frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.with_cp = bool(with_cp)

        arch = self.arch
        self.embed_dims = [arch['embed_dims'] * 2**s for s in range(num_stages)]
        self.stem = nn.Conv2d(in_channels, self.embed_dims[0], kernel_size=4, stride=4, bias=False)

        # Linear drop path over all blocks in forward order (MSA, QnA, downsampler per stage).
        per_stage = [arch['msa_depths'][s] + arch['qna_depths'][s] + int(s < num_stages - 1)
                     for s in range(num_stages)]
        rates = torch.linspace(0, self.drop_path_rate, sum(per_stage)).tolist()
        self.stages = nn.ModuleList()
        offset = 0
        for s in range(num_stages):
            self.stages.append(QnAViTStage(
                embed_dims=self.embed_dims[s], msa_depth=arch['msa_depths'][s],
                msa_heads=arch['msa_heads'][s], window_size=arch['window_sizes'][s],
                qna_depth=arch['qna_depths'][s], qna_heads=arch['qna_heads'][s],
                qna_kernel_size=arch['qna_kernel_size'], num_queries=arch['num_queries'],
                downsample=s < num_stages - 1, drop_paths=rates[offset:offset + per_stage[s]],
                mlp_ratio=arch['mlp_ratio'], norm_cfg=norm_cfg, act_cfg=act_cfg,
                with_cp=self.with_cp))
            offset += per_stage[s]
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.embed_dims[i])[1])
        self.num_features = [self.embed_dims[i] for i in self.out_indices]
        self._freeze_stages()

    # ---------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f'QnAViT expects [B, C, H, W] images, got shape {tuple(x.shape)}')
        # Flax 'SAME' padding of the 4x4 stride-4 stem (nothing to pad when H, W % 4 == 0).
        pad_h, pad_w = (-x.shape[2]) % 4, (-x.shape[3]) % 4
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        x = self.stem(x).permute(0, 2, 3, 1)                           # [B, H/4, W/4, C]
        outs = []
        for i, stage in enumerate(self.stages):
            feature, x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(feature)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # ---------------------------------------------------------------------------------------
    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.stem]
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'QnAViT':
        super().train(mode)
        self._freeze_stages()
        return self

    # ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Release-style default init, then ``init_cfg`` (``Pretrained``: see the class doc)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                kaiming_init(module, mode='fan_in', nonlinearity='linear', bias=0.,
                             distribution='normal')
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, 1., bias=0.)
            elif isinstance(module, WindowSelfAttention):
                nn.init.zeros_(module.relative_position_bias_table)
            elif isinstance(module, QnA2d):
                nn.init.normal_(module.query, std=1.0)
                nn.init.normal_(module.rpb, std=module.rpb_init_std)
                nn.init.normal_(module.attn_scale, std=module.attn_scale_init_std)
        init_cfg = self.init_cfg
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            self.load_pretrained(init_cfg['checkpoint'], prefix=init_cfg.get('prefix'),
                                 map_location=init_cfg.get('map_location', 'cpu'))
            self._is_init = True
        elif init_cfg is not None:
            super().init_weights()

    def load_pretrained(self, checkpoint: Union[str, dict], prefix: Optional[str] = None,
                        map_location: str = 'cpu') -> dict:
        """Load a checkpoint (path, or an already loaded dict) into this backbone.

        Returns ``dict(missing=[...], unexpected=[...], resized=[...], skipped=[...])``; each
        non-empty list is also reported through the current mmengine logger.
        """
        if isinstance(checkpoint, str):
            from mmengine.runner.checkpoint import CheckpointLoader
            source = checkpoint
            checkpoint = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
        else:
            source = '<dict>'
        state_dict = _strip_wrappers(checkpoint, prefix)
        own = self.state_dict()
        resized, skipped, loadable = [], [], {}
        for name, value in state_dict.items():
            if name not in own:
                continue
            target = own[name]
            if value.shape != target.shape:
                if name.endswith('relative_position_bias_table') and value.dim() == 2 \
                        and value.shape[1] == target.shape[1]:
                    value = _resize_bias_table(value, target.shape[0])
                    resized.append(name)
                else:
                    skipped.append(f'{name}: checkpoint {tuple(value.shape)} vs model '
                                   f'{tuple(target.shape)}')
                    continue
            loadable[name] = value
        missing = sorted(set(own) - set(loadable))
        unexpected = sorted(set(state_dict) - set(own))
        self.load_state_dict(loadable, strict=False)
        report = dict(missing=missing, unexpected=unexpected, resized=resized, skipped=skipped)
        print_log(f'QnAViT: loaded {len(loadable)}/{len(own)} tensors from {source}',
                  logger='current')
        for key, level in (('missing', 'WARNING'), ('unexpected', 'WARNING'),
                           ('skipped', 'WARNING'), ('resized', 'INFO')):
            if report[key]:
                print_log(f'QnAViT: {key} keys ({len(report[key])}): {report[key]}',
                          logger='current', level=30 if level == 'WARNING' else 20)
        return report


def _strip_wrappers(checkpoint: dict, prefix: Optional[str]) -> dict:
    """``{'state_dict' | 'model' | 'module': sd}`` -> sd; drop ``module.``; keep the backbone."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'QnAViT: checkpoint must be a dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        if not prefix.endswith('.'):
            prefix += '.'
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f'QnAViT: no checkpoint key starts with prefix {prefix!r}')
    return state_dict


def _resize_bias_table(table: Tensor, new_len: int) -> Tensor:
    """Bicubic resize of a ``[(2w-1)^2, heads]`` table to ``[new_len, heads]``."""
    old_side, new_side = round(table.shape[0]**0.5), round(new_len**0.5)
    grid = table.float().T.reshape(1, -1, old_side, old_side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode='bicubic', align_corners=False)
    return grid.reshape(-1, new_len).T.to(table.dtype).contiguous()
