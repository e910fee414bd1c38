"""DiNAT_s: Swin's skeleton with neighbourhood attention (Hassani & Shi, DiNAT paper, "DiNAT_s").

One readable file: arch tables, dilation presets, patch embedding, patch merging and backbone (its
stages are :class:`~localattn.backbones.nat.NATLevel`s ending with the patch merging).
Swin's window self-attention is replaced by NA (even blocks of every stage, dilation 1) and its
shifted-window attention by dilated NA (odd blocks); everything else is Swin's: a 4x4 stride-4 patch
embedding, patch merging between stages, mlp ratio 4, no layer scale.

Module names follow the official release (``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.*``,
``layers.{i}.downsample.{reduction,norm}``), so its ImageNet checkpoints load without renaming; the
classifier's ``norm.*`` becomes the last output norm (:func:`localattn.converters.official.dinats_to_backbone`).

Data flow is channels-last ``[B, H, W, C]`` inside the network; the outputs are NCHW.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch import Tensor

from ..converters.official import dinats_to_backbone
from .nat import PyramidNA, build_levels, check_na_backend, resolve_dilations

__all__ = ['DiNATs', 'DINATS_ARCHS', 'DINATS_DILATIONS']

#: Official DiNAT_s variants (Swin-T/S/B/L widths and depths): kernel 7, mlp ratio 4, head dim 32.
DINATS_ARCHS: Dict[str, dict] = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.,
                 drop_path_rate=0.2, kernel_size=7),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.,
                  drop_path_rate=0.3, kernel_size=7),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), mlp_ratio=4.,
                 drop_path_rate=0.5, kernel_size=7),
    'large': dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), mlp_ratio=4.,
                  drop_path_rate=0.35, kernel_size=7),
}

#: Per-block dilations of the release for depths (2, 2, 18, 2); shallower stages (Tiny's 6) use the
#: first ``depth`` entries. Even blocks are always 1 (NA), odd blocks dilated (DiNA).
#:
#: * ``imagenet``: classification at 224 px; ``imagenet-384``: at 384 px;
#: * ``coco``: detection (``[1, 3, 1, 5, 1, 7]`` repeated over stage 3);
#: * ``ade20k``: UPerNet on 512 px crops (``[1, 2, 1, 3, 1, 4]`` repeated over stage 3).
DINATS_DILATIONS: Dict[str, List[List[int]]] = {
    'imagenet': [[1, 8], [1, 4], [1, 2] * 9, [1, 1]],
    'imagenet-384': [[1, 13], [1, 6], [1, 3] * 9, [1, 1]],
    'coco': [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]],
    'ade20k': [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2]],
}


class PatchEmbed(nn.Module):
    """Stem: ``patch_size`` x ``patch_size`` conv with stride ``patch_size`` (with bias), then LayerNorm.

    The input is zero-padded on the right/bottom to a multiple of ``patch_size``:
    ``[B, in_channels, H, W]`` -> ``[B, ceil(H / p), ceil(W / p), C]`` (channels-last).
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, norm_cfg: dict) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's downsampler, channels-last: ``[B, H, W, C]`` -> ``[B, ceil(H/2), ceil(W/2), 2C]``.

    Odd sides are zero-padded on the right/bottom; the four 2x2 phases ``(row, col)`` are
    concatenated along channels in the order (0, 0), (1, 0), (0, 1), (1, 1), then
    ``norm`` (LayerNorm(4C)) and ``reduction`` (Linear 4C -> 2C, no bias).
    """

    def __init__(self, in_channels: int, norm_cfg: dict) -> None:
        super().__init__()
        self.norm = build_norm_layer(norm_cfg, 4 * in_channels)[1]
        self.reduction = nn.Linear(4 * in_channels, 2 * in_channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[1], x.shape[2]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class DiNATs(PyramidNA):
    """DiNAT_s backbone: Swin with NA and dilated NA (`DiNAT <https://arxiv.org/abs/2209.15001>`_).

    Patch embedding (4x4 stride-4 conv + LN) -> 4 stages of pre-norm blocks alternating NA (even
    blocks, dilation 1) and DiNA (odd blocks, the preset's dilation), each stage but the last
    followed by Swin patch merging (``C -> 2C``). Output ``i`` is stage ``i``'s features before its
    merging, through its own LayerNorm ``norm{i}``, as NCHW with ``embed_dims * 2**i`` channels at
    stride ``2**(i+2)``. Usable in mmdet, mmseg and mmpretrain (``out_indices=(3,)`` with
    ``GlobalAveragePooling`` + ``LinearClsHead`` gives the official classifier). The interface
    (``out_indices``, ``frozen_stages``, ``with_cp``, ``num_features``, ``init_cfg``) is
    :class:`~localattn.backbones.base.HierarchicalBackbone`'s.

    Args:
        arch: ``'tiny' | 'small' | 'base' | 'large'`` (:data:`DINATS_ARCHS`) or a dict with
            ``embed_dims``, ``depths``, ``num_heads`` and optionally ``mlp_ratio`` (4),
            ``drop_path_rate`` (0.1), ``kernel_size`` (7).
        dilations: a preset of :data:`DINATS_DILATIONS` (``'imagenet'`` (default), ``'imagenet-384'``,
            ``'coco'``, ``'ade20k'``) or explicit per-block dilations (one list of positive ints per
            stage, one entry per block).
        in_channels: image channels.
        kernel_size: NA window size; None uses the arch's (7).
        drop_path_rate: stochastic depth, increased linearly over all blocks from 0; None uses the
            arch's (0.2 / 0.3 / 0.5 / 0.35).
        qkv_bias: bias in the ``qkv`` projections.
        drop_rate: dropout after the attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        out_indices: stages to return (negative indices allowed).
        frozen_stages: -1 freezes nothing; 0 the patch embedding; ``n >= 1`` also the first ``n``
            stages (with their patch merging) and their output norms. Frozen modules have
            ``requires_grad=False`` and stay in eval mode through ``train()``.
        norm_cfg: every LayerNorm (``dict(type='LN')``; channels-last).
        with_cp: ``torch.utils.checkpoint`` each block (``use_reentrant=False``) to save memory.
        na_backend: the NA backend of every block, as :class:`~localattn.backbones.NAT`'s.
        init_cfg: None (truncated-normal init), a dict or a list. ``dict(type='Pretrained',
            checkpoint=PATH)`` loads an official DiNAT_s classification checkpoint (``layers.*``,
            ``norm.*``, ``head.*``; wrapped or prefixed ``module.``/``backbone.``), an mmpretrain
            conversion or a detector/segmentor checkpoint: ``head.*`` is dropped, ``norm.*`` becomes
            the last output norm (when returned), RPB tables are resized bicubically when
            ``kernel_size`` differs, and the load report is logged. A checkpoint of another layout
            (NAT/DiNAT ``levels.*``, isotropic) raises a ValueError naming the class to use.

    Inputs of any size: the input is padded on the right/bottom to a multiple of 4 and every patch
    merging pads odd sides, so a side ``L`` gives ``ceil(L / 4)``, then ``ceil`` halves (511x383 ->
    128x96, 64x48, 32x24, 16x12): the same output sizes as :class:`~localattn.backbones.NAT`.
    **Small maps**: along an axis shorter than ``kernel_size * dilation`` (e.g. the COCO preset's
    dilation 28 at stride 4 needs a 784 px side, its dilation 3 at stride 32 a 672 px one), each query attends
    to all the tokens of its dilation group along that axis (kernel ``ceil(L / dilation)``, padding
    of less than ``dilation`` masked), as :class:`~localattn.layers.NeighborhoodAttention2d` does:
    no error, no zero keys, the dilation is not clamped. The official code zero-padded such maps to
    ``kernel_size * dilation`` without masking, so results on them differ slightly.

    Weight decay: parameter names contain ``norm`` for every LayerNorm and ``rpb`` for the relative
    positional bias tables (``custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}``).
    """

    arch_zoo = DINATS_ARCHS
    arch_required = ('embed_dims', 'depths', 'num_heads')
    arch_defaults = dict(mlp_ratio=4., drop_path_rate=0.1, kernel_size=7)
    stem_name = 'patch_embed'
    stages_name = 'layers'
    adapt_checkpoint = staticmethod(dinats_to_backbone)
    stage_word = 'stage'

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 dilations: Union[str, Sequence[Sequence[int]]] = 'imagenet', in_channels: int = 3,
                 kernel_size: Optional[int] = None, drop_path_rate: Optional[float] = None,
                 qkv_bias: bool = True, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False, na_backend: str = 'auto',
                 init_cfg: Optional[dict] = None) -> None:
        spec = self.resolve_arch(arch, kernel_size=kernel_size, drop_path_rate=drop_path_rate)
        super().__init__(spec, out_indices, frozen_stages, with_cp, init_cfg)
        self.dilations = resolve_dilations(dilations, self.depths, DINATS_DILATIONS)

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, 4, norm_cfg)
        # Stages are NAT's levels (NATBlocks, no layer scale) ending with PatchMerging.
        self.layers = build_levels(
            self.num_features, self.depths, self.num_heads, self.kernel_size, self.dilations,
            spec['drop_path_rate'], PatchMerging, norm_cfg, self.with_cp,
            mlp_ratio=spec['mlp_ratio'], qkv_bias=qkv_bias, drop=drop_rate,
            attn_drop=attn_drop_rate, na_backend=check_na_backend(na_backend))
        self.add_output_norms(norm_cfg)
