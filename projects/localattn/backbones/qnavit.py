"""QnA-ViT ("Learned Queries for Efficient Local Attention", Arar et al., CVPR 2022) as an
OpenMMLab backbone.

Layout (one readable file): architecture table, the two block types, the stage and the backbone.
The layers are :class:`~localattn.layers.QnA2d` and :class:`~localattn.layers.WindowSelfAttention`
(whose module docstring gives the small-input / padding policy). Every block works on
channels-last maps ``[B, H, W, C]``; the backbone returns NCHW feature maps.

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
and no qkv/out bias. Padding and partitioning happen once per stage: all MSA blocks of a stage run
on the same windows, exactly like the official LSAStage, which partitions once before its blocks.

Stride-2 QnA blocks give ``ceil(H / 2) x ceil(W / 2)`` maps, so any input size works (odd,
non-square, or as small as one pixel per stage).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmengine.model.weight_init import constant_init, kaiming_init
from torch import Tensor

from ..layers import QnA2d, WindowSelfAttention
from ..layers.window_attention import window_merge, window_partition
from .base import HierarchicalBackbone, checkpoint_blocks

__all__ = ['QnAViT', 'ARCH_SETTINGS', 'NO_DECAY_KEYS']

_TINY = dict(embed_dims=64, qna_depths=(2, 3, 2, 0), msa_depths=(0, 0, 4, 2),
             qna_heads=(8, 16, 32, 64), msa_heads=(2, 4, 8, 16), qna_kernel_size=3,
             window_sizes=(7, 7, 14, 7), drop_path_rate=0.05)
_SMALL = dict(_TINY, qna_depths=(2, 3, 6, 0), msa_depths=(0, 0, 12, 2), drop_path_rate=0.2)

#: Released architectures (paper Table / official ``qna_vit_*`` configs). ``qna_heads[s]`` are the
#: heads of the stride-1 QnA blocks of stage ``s`` (the stride-2 block of that stage uses twice as
#: many); ``qna_heads`` of the last stage is unused by the released models (no QnA block there).
#: ``drop_path_rate`` is the value used for ImageNet training (the default of the argument).
ARCH_SETTINGS = {
    'tiny': _TINY,
    'tiny-7x7': dict(_TINY, qna_kernel_size=7),
    'small': _SMALL,
    'base': dict(_SMALL, embed_dims=96, qna_heads=(6, 12, 24, 48), msa_heads=(3, 6, 12, 24),
                 drop_path_rate=0.5),
}

#: Substrings for ``paramwise_cfg.custom_keys`` that select exactly the parameters the official
#: recipe trains without weight decay: LayerNorms, MSA bias tables, and QnA ``rpb``,
#: ``attn_scale`` and ``query``.
NO_DECAY_KEYS = ('norm', 'relative_position_bias_table', '.rpb', '.attn_scale', '.query')


def _is_pos_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, H, W, C]`` -> (feature ``[B, H, W, C]``, output for the next stage)."""
        if len(self.msa_blocks):
            windows, layout, key_mask = window_partition(x, self.window_size)
            windows = checkpoint_blocks(self.msa_blocks, windows, layout[2:4], key_mask,
                                        with_cp=self.with_cp)
            x = window_merge(windows, layout)
        feature = checkpoint_blocks(self.qna_blocks, x, with_cp=self.with_cp)
        if self.downsample is None:
            return feature, feature
        return feature, checkpoint_blocks([self.downsample], feature, with_cp=self.with_cp)


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------
class QnAViT(HierarchicalBackbone):
    """QnA-ViT backbone (see the module docstring for the architecture). The interface
    (``out_indices``, ``frozen_stages``, ``with_cp``, ``num_features``, ``init_cfg``) is
    :class:`~localattn.backbones.base.HierarchicalBackbone`'s.

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
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` (or a list) loads a checkpoint laid
            out as this module: ``state_dict``/``module.``/``backbone.`` wrappers are stripped (an
            explicit ``prefix`` is honoured), MSA bias tables are resized (bicubic) when the
            window differs, other shape mismatches are skipped, and the load report is logged
            (:meth:`load_pretrained`). Before that, weights get the release's init: Linear and
            Conv lecun normal (std ``1/sqrt(fan_in)``), zero biases, LayerNorm (1, 0), zero bias
            tables, and ``QnA2d``'s own init for ``query``, ``rpb`` and ``attn_scale``.

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

    arch_zoo = ARCH_SETTINGS
    arch_required = ('embed_dims', 'qna_depths', 'msa_depths', 'qna_heads', 'msa_heads',
                     'window_sizes')
    arch_defaults = dict(qna_kernel_size=3, num_queries=2, mlp_ratio=4, drop_path_rate=0.)
    no_decay_keys = NO_DECAY_KEYS

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: Optional[float] = None, frozen_stages: int = -1,
                 with_cp: bool = False, norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU', approximate='tanh'),
                 init_cfg: Optional[dict] = None) -> None:
        spec = self.resolve_arch(arch, drop_path_rate=drop_path_rate)
        num_stages = len(spec['qna_depths'])
        super().__init__(spec, [spec['embed_dims'] * 2**s for s in range(num_stages)],
                         out_indices, frozen_stages, with_cp, init_cfg)
        if not _is_pos_int(in_channels):
            raise ValueError(f'QnAViT: in_channels must be a positive int, got {in_channels!r}')
        self.embed_dims = spec['embed_dims']
        self.drop_path_rate = float(spec['drop_path_rate'])
        self.stem = nn.Conv2d(in_channels, self.embed_dims, kernel_size=4, stride=4, bias=False)

        # Linear drop path over all blocks in forward order (MSA, QnA, downsampler per stage).
        per_stage = [spec['msa_depths'][s] + spec['qna_depths'][s] + int(s < num_stages - 1)
                     for s in range(num_stages)]
        rates = torch.linspace(0, self.drop_path_rate, sum(per_stage)).tolist()
        self.stages = nn.ModuleList()
        offset = 0
        for s in range(num_stages):
            self.stages.append(QnAViTStage(
                embed_dims=self.num_features[s], msa_depth=spec['msa_depths'][s],
                msa_heads=spec['msa_heads'][s], window_size=spec['window_sizes'][s],
                qna_depth=spec['qna_depths'][s], qna_heads=spec['qna_heads'][s],
                qna_kernel_size=spec['qna_kernel_size'], num_queries=spec['num_queries'],
                downsample=s < num_stages - 1, drop_paths=rates[offset:offset + per_stage[s]],
                mlp_ratio=spec['mlp_ratio'], norm_cfg=norm_cfg, act_cfg=act_cfg,
                with_cp=self.with_cp))
            offset += per_stage[s]
        self.add_output_norms(norm_cfg)

    @classmethod
    def check_arch(cls, cfg: dict) -> dict:
        def fail(message: str):
            raise ValueError(f'QnAViT: arch {message}')

        if not _is_pos_int(cfg['embed_dims']):
            fail(f'embed_dims must be a positive int (the width of stage 0; stage s has '
                 f'embed_dims * 2**s), got {cfg["embed_dims"]!r}')
        lists = ('qna_depths', 'msa_depths', 'qna_heads', 'msa_heads', 'window_sizes')
        for key in lists:
            if not isinstance(cfg[key], (list, tuple)) or len(cfg[key]) == 0:
                fail(f'{key} must be a non-empty list, got {cfg[key]!r}')
            cfg[key] = tuple(cfg[key])
        lengths = {key: len(cfg[key]) for key in lists}
        if len(set(lengths.values())) != 1:
            fail(f'lists must all have one entry per stage, got lengths {lengths}')
        for key in ('qna_depths', 'msa_depths'):
            if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in cfg[key]):
                fail(f'{key} must hold non-negative ints, got {cfg[key]}')
        for key in ('qna_kernel_size', 'num_queries', 'mlp_ratio'):
            if not _is_pos_int(cfg[key]):
                fail(f'{key} must be a positive int, got {cfg[key]!r}')
        if cfg['qna_kernel_size'] % 2 == 0:
            fail(f'qna_kernel_size must be odd, got {cfg["qna_kernel_size"]}')
        rate = cfg['drop_path_rate']
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            fail(f'drop_path_rate must be in [0, 1), got {rate!r}')
        num_stages = len(cfg['qna_depths'])
        for s in range(num_stages):
            dims, qna_heads, msa_heads = (cfg['embed_dims'] * 2**s, cfg['qna_heads'][s],
                                          cfg['msa_heads'][s])
            uses_qna = cfg['qna_depths'][s] > 0 or s < num_stages - 1
            if uses_qna and (not _is_pos_int(qna_heads) or dims % qna_heads):
                fail(f'stage {s} width {dims} must be divisible by qna_heads[{s}] (a positive '
                     f'int), got {qna_heads!r}')
            if cfg['msa_depths'][s] and (not _is_pos_int(msa_heads) or dims % msa_heads):
                fail(f'stage {s} width {dims} must be divisible by msa_heads[{s}] (a positive '
                     f'int), got {msa_heads!r}')
            if cfg['msa_depths'][s] and not _is_pos_int(cfg['window_sizes'][s]):
                fail(f'window_sizes[{s}] must be a positive int, got {cfg["window_sizes"][s]!r}')
        return cfg

    def forward_stem(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f'QnAViT expects [B, C, H, W] images, got shape {tuple(x.shape)}')
        # Flax 'SAME' padding of the 4x4 stride-4 stem (nothing to pad when H, W % 4 == 0).
        pad_h, pad_w = (-x.shape[2]) % 4, (-x.shape[3]) % 4
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return self.stem(x).permute(0, 2, 3, 1)                        # [B, H/4, W/4, C]

    def default_init(self) -> None:
        """The release's init (see the class docstring)."""
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
