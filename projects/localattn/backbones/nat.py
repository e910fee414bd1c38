"""NAT and DiNAT: hierarchical Neighborhood Attention Transformers (Hassani et al., CVPR 2023 / 2022).

One readable file: arch tables, tokenizer, block, level (stage + downsampler) and the two backbones.
Module names follow the official release (``patch_embed.proj.{0,1}``, ``levels.{i}.blocks.{j}.*``,
``levels.{i}.downsample.*``) so official ImageNet checkpoints load without renaming; the classification
``norm.*`` maps to the last output norm (see :mod:`localattn.converters.nat`).

Data flow is channels-last ``[B, H, W, C]`` inside the network; the outputs are NCHW.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, trunc_normal_, trunc_normal_init
from torch import Tensor

from ..layers import NeighborhoodAttention2d

__all__ = ['NAT', 'DiNAT', 'NAT_ARCHS', 'DINAT_DILATIONS']

#: Official NAT variants (paper Table 1): kernel 7, head dim 32 everywhere.
NAT_ARCHS: Dict[str, dict] = {
    'mini': dict(embed_dims=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.,
                 layer_scale=None, drop_path_rate=0.2, kernel_size=7),
    'tiny': dict(embed_dims=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.,
                 layer_scale=None, drop_path_rate=0.2, kernel_size=7),
    'small': dict(embed_dims=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.,
                  layer_scale=1e-5, drop_path_rate=0.3, kernel_size=7),
    'base': dict(embed_dims=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.,
                 layer_scale=1e-5, drop_path_rate=0.5, kernel_size=7),
}
#: Defaults for keys a custom ``arch`` dict leaves out.
_ARCH_DEFAULTS = dict(mlp_ratio=3., layer_scale=None, drop_path_rate=0.1, kernel_size=7)
_ARCH_REQUIRED = ('embed_dims', 'depths', 'num_heads')

#: DiNAT per-block dilation presets (DiNAT paper): ImageNet at 224, COCO and ADE20K fine-tuning.
#: Shallower stages use the first ``depth`` entries of each list.
DINAT_DILATIONS: Dict[str, List[List[int]]] = {
    'imagenet': [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1, 1, 1, 1, 1]],
    'coco': [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
    'ade20k': [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
}


class ConvTokenizer(nn.Module):
    """Stem: 3x3 s2 conv to ``C/2``, 3x3 s2 conv to ``C`` (no activation), LayerNorm.

    ``[B, in_channels, H, W]`` -> ``[B, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2), C]`` (channels-last).
    """

    def __init__(self, in_channels: int, embed_dims: int, norm_cfg: dict) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, embed_dims // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dims // 2, embed_dims, kernel_size=3, stride=2, padding=1))
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 s2 conv ``C -> 2C`` without bias, then LayerNorm; channels-last in and out."""

    def __init__(self, in_channels: int, norm_cfg: dict) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_channels, 2 * in_channels, kernel_size=3, stride=2,
                                   padding=1, bias=False)
        self.norm = build_norm_layer(norm_cfg, 2 * in_channels)[1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class Mlp(nn.Module):
    """``fc1`` - GELU - ``fc2`` (dropout after each linear)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class NATBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(g1 * NA(LN(x)))``, then ``x + DropPath(g2 * MLP(LN(x)))``.

    ``gamma1``/``gamma2`` (layer scale, init ``layer_scale``) exist only when ``layer_scale`` is set.
    """

    def __init__(self, embed_dims: int, num_heads: int, kernel_size: int, dilation: int = 1,
                 mlp_ratio: float = 3., qkv_bias: bool = True, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., layer_scale: Optional[float] = None,
                 norm_cfg: dict = dict(type='LN')) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = NeighborhoodAttention2d(
            embed_dims, num_heads, kernel_size, dilation=dilation, qkv_bias=qkv_bias, rpb=True,
            attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), drop=drop)
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.full((embed_dims, ), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((embed_dims, ), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(self.gamma1 * y if self.layer_scale else y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(self.gamma2 * y if self.layer_scale else y)


class NATLevel(nn.Module):
    """A stage: ``blocks`` then the optional ``downsample``.

    Returns ``(features before the downsampler, input of the next level)``.
    """

    def __init__(self, embed_dims: int, depth: int, num_heads: int, kernel_size: int,
                 dilations: Sequence[int], drop_path: Sequence[float], downsample: bool,
                 norm_cfg: dict, with_cp: bool = False, **block_kwargs) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.blocks = nn.ModuleList([
            NATBlock(embed_dims, num_heads, kernel_size, dilation=dilations[j],
                     drop_path=drop_path[j], norm_cfg=norm_cfg, **block_kwargs)
            for j in range(depth)
        ])
        self.downsample = ConvDownsampler(embed_dims, norm_cfg) if downsample else None

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


def _resolve_arch(arch: Union[str, dict]) -> dict:
    if isinstance(arch, str):
        key = arch.lower()
        if key not in NAT_ARCHS:
            raise ValueError(f'Unknown arch {arch!r}; choose one of {sorted(NAT_ARCHS)} or pass a '
                             f'dict with keys {list(_ARCH_REQUIRED)} (optional: {sorted(_ARCH_DEFAULTS)})')
        return copy.deepcopy(NAT_ARCHS[key])
    if not isinstance(arch, dict):
        raise ValueError(f'arch must be a str or a dict, got {type(arch).__name__}')
    missing = [k for k in _ARCH_REQUIRED if k not in arch]
    unknown = sorted(set(arch) - set(_ARCH_REQUIRED) - set(_ARCH_DEFAULTS))
    if missing or unknown:
        raise ValueError(f'Custom arch dict: missing keys {missing}, unknown keys {unknown}; '
                         f'required {list(_ARCH_REQUIRED)}, optional {sorted(_ARCH_DEFAULTS)}')
    spec = {**_ARCH_DEFAULTS, **copy.deepcopy(arch)}
    spec['depths'] = tuple(spec['depths'])
    spec['num_heads'] = tuple(spec['num_heads'])
    if len(spec['depths']) == 0 or len(spec['depths']) != len(spec['num_heads']):
        raise ValueError(f"arch depths {spec['depths']} and num_heads {spec['num_heads']} must be "
                         'non-empty and of equal length')
    if any(not isinstance(d, int) or d < 1 for d in spec['depths']):
        raise ValueError(f"arch depths must be positive ints, got {spec['depths']}")
    return spec


class NAT(BaseModule):
    """Neighborhood Attention Transformer backbone (`NAT <https://arxiv.org/abs/2204.07143>`_).

    Tokenizer (two 3x3 s2 convs + LN, stride 4) -> 4 levels of pre-norm NA blocks, each level but the
    last followed by a 3x3 s2 conv downsampler (``C -> 2C``) + LN. Output ``i`` is level ``i``'s features
    before its downsampler, through its own LayerNorm ``norm{i}``, as NCHW with ``embed_dims * 2**i``
    channels at stride ``2**(i+2)``. Usable in mmdet, mmseg and mmpretrain (``out_indices=(3,)``
    with ``GlobalAveragePooling`` + ``LinearClsHead`` gives the official classifier).

    Args:
        arch: ``'mini' | 'tiny' | 'small' | 'base'`` (:data:`NAT_ARCHS`) or a dict with
            ``embed_dims``, ``depths``, ``num_heads`` and optionally ``mlp_ratio`` (3), ``layer_scale``
            (None), ``drop_path_rate`` (0.1), ``kernel_size`` (7).
        in_channels: image channels.
        kernel_size: NA window size; None uses the arch's (7).
        drop_path_rate: stochastic depth, increased linearly over all blocks from 0; None uses the
            arch's (0.2 / 0.2 / 0.3 / 0.5).
        layer_scale: None uses the arch's (1e-5 for small/base); a positive float enables the
            ``gamma1``/``gamma2`` vectors with that init; ``0``/``False`` disables them.
        qkv_bias: bias in the ``qkv`` projections.
        drop_rate: dropout after the attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        out_indices: levels to return (0..num_levels-1).
        frozen_stages: -1 freezes nothing; 0 freezes the tokenizer (``patch_embed``); ``n >= 1`` also
            the first ``n`` levels (with their downsamplers) and the output norms ``norm{i}``, ``i < n``.
            Frozen modules have ``requires_grad=False`` and stay in eval mode through ``train()``.
        norm_cfg: norm of every LayerNorm (``dict(type='LN')``; channels-last).
        with_cp: ``torch.utils.checkpoint`` each block (``use_reentrant=False``) to save memory.
        init_cfg: None (truncated-normal init) or ``dict(type='Pretrained', checkpoint=PATH)``. A local
            checkpoint in the official layout (``levels.*``, ``norm.*``, ``head.*``; wrapped in
            ``state_dict``/``model`` and/or prefixed ``module.``/``backbone.``) or an mmpretrain
            conversion loads directly: ``head.*`` is dropped, ``norm.*`` becomes the last output norm
            (when returned), RPB tables are resized bicubically when ``kernel_size`` differs, and a
            report of missing / unexpected / resized keys is logged. See
            :func:`localattn.converters.nat.load_nat_checkpoint`.

    Inputs of any size: the tokenizer and downsamplers use padding 1, so a map of size ``L`` becomes
    ``ceil(L / 2)`` (511x383 -> 128x96 at stride 4). **Small maps**: when a level's map is smaller than
    ``kernel_size * dilation`` along an axis, :class:`~localattn.layers.NeighborhoodAttention2d` pads
    it up to that size and masks the padded keys, so each query attends to all real tokens of its
    dilation group along that axis (at most ``kernel_size`` of them): no error and no zero keys.
    Note that the official code padded with zeros without masking, so results on such maps differ
    slightly from the original implementation.

    Weight decay: parameter names contain ``norm`` for every LayerNorm (``norm1``, ``norm2``,
    ``patch_embed.norm``, ``downsample.norm``, ``norm{i}``), ``rpb`` for the relative positional
    bias tables and ``gamma`` for layer-scale vectors, so an optimizer wrapper with
    ``paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.),
    'gamma': dict(decay_mult=0.)})`` excludes exactly those from weight decay.
    """

    #: DiNAT overrides; NAT uses dilation 1 everywhere.
    _default_dilations = None

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 kernel_size: Optional[int] = None, drop_path_rate: Optional[float] = None,
                 layer_scale: Optional[float] = None, qkv_bias: bool = True, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_cfg: dict = dict(type='LN'), with_cp: bool = False,
                 init_cfg: Optional[dict] = None, **kwargs) -> None:
        dilations = kwargs.pop('dilations', None)  # DiNAT's argument, passed through by DiNAT
        if kwargs:
            raise TypeError(f'{type(self).__name__} got unexpected arguments {sorted(kwargs)}')
        super().__init__(init_cfg=init_cfg)
        spec = _resolve_arch(arch)
        if kernel_size is not None:
            spec['kernel_size'] = kernel_size
        if drop_path_rate is not None:
            spec['drop_path_rate'] = drop_path_rate
        if layer_scale is not None:
            spec['layer_scale'] = float(layer_scale) if layer_scale else None
        k = spec['kernel_size']
        if not isinstance(k, int) or k < 1:
            raise ValueError(f'kernel_size must be a positive int, got {k!r}')
        self.arch_settings = spec
        self.embed_dims = int(spec['embed_dims'])
        self.depths = tuple(spec['depths'])
        self.num_heads = tuple(spec['num_heads'])
        self.kernel_size = k
        self.num_levels = len(self.depths)
        self.num_features = [self.embed_dims * 2**i for i in range(self.num_levels)]
        for dim, heads in zip(self.num_features, self.num_heads):
            if heads < 1 or dim % heads:
                raise ValueError(f'num_heads {self.num_heads} must divide the level widths '
                                 f'{self.num_features}')

        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(int(i) for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < self.num_levels]
        if not out_indices or bad:
            raise ValueError(f'out_indices {out_indices} must be a non-empty subset of '
                             f'0..{self.num_levels - 1}')
        if len(set(out_indices)) != len(out_indices):
            raise ValueError(f'out_indices {out_indices} contains duplicates')
        self.out_indices = out_indices
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_levels:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_levels}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.dilations = self._resolve_dilations(dilations)

        self.patch_embed = ConvTokenizer(in_channels, self.embed_dims, norm_cfg)
        dpr = torch.linspace(0, spec['drop_path_rate'], sum(self.depths)).tolist()
        self.levels = nn.ModuleList()
        start = 0
        for i, depth in enumerate(self.depths):
            self.levels.append(NATLevel(
                self.num_features[i], depth, self.num_heads[i], k, dilations=self.dilations[i],
                drop_path=dpr[start:start + depth], downsample=i < self.num_levels - 1,
                norm_cfg=norm_cfg, with_cp=with_cp, mlp_ratio=spec['mlp_ratio'],
                qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                layer_scale=spec['layer_scale']))
            start += depth
        for i in out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._freeze_stages()

    def _resolve_dilations(self, dilations) -> List[List[int]]:
        if dilations is not None:
            raise TypeError('NAT has no dilations; use DiNAT')
        return [[1] * d for d in self.depths]

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """``[B, C_in, H, W]`` -> tuple of NCHW maps, one per ``out_indices``."""
        x = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, level in enumerate(self.levels):
            feat, x = level(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(feat)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
            if i == last:
                break
        return tuple(outs)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.patch_embed]
        for i in range(self.frozen_stages):
            modules.append(self.levels[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'NAT':
        super().train(mode)
        self._freeze_stages()
        return self

    # ----------------------------------------------------------------------------------------------
    def _default_init(self) -> None:
        """Official init: truncated normal (std 0.02) for linears and RPB tables, LN to (1, 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, val=1., bias=0.)
            elif isinstance(module, NeighborhoodAttention2d) and getattr(module, 'rpb', None) is not None:
                trunc_normal_(module.rpb, std=.02)
        for module in self.modules():
            if isinstance(module, NATBlock) and module.layer_scale:
                nn.init.constant_(module.gamma1, module.layer_scale)
                nn.init.constant_(module.gamma2, module.layer_scale)

    def init_weights(self) -> None:
        """Default init, then the ``Pretrained`` checkpoint of ``init_cfg`` if given."""
        cfg = self.init_cfg
        if isinstance(cfg, (list, tuple)):
            pretrained = [c for c in cfg if c.get('type') == 'Pretrained']
            others = [c for c in cfg if c.get('type') != 'Pretrained']
        elif isinstance(cfg, dict):
            pretrained = [cfg] if cfg.get('type') == 'Pretrained' else []
            others = [] if pretrained else [cfg]
        else:
            pretrained, others = [], []
        self._default_init()
        if others:
            from mmengine.model import initialize
            initialize(self, others)
        for p_cfg in pretrained:
            if 'checkpoint' not in p_cfg:
                raise ValueError("init_cfg type='Pretrained' needs a 'checkpoint' path")
            from ..converters.nat import load_nat_checkpoint
            report = load_nat_checkpoint(self, p_cfg['checkpoint'], prefix=p_cfg.get('prefix'))
            print_log(report.format(p_cfg['checkpoint']), logger='current')
        self._is_init = True

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, depths={self.depths}, num_heads={self.num_heads}, '
                f'kernel_size={self.kernel_size}, out_indices={self.out_indices}')


def _check_dilations(dilations, depths: Sequence[int]) -> List[List[int]]:
    if (not isinstance(dilations, (list, tuple)) or len(dilations) != len(depths)
            or any(not isinstance(level, (list, tuple)) for level in dilations)):
        raise ValueError(f'dilations must be a preset name {sorted(DINAT_DILATIONS)} or a list of '
                         f'{len(depths)} per-level lists, got {dilations!r}')
    for i, (level, depth) in enumerate(zip(dilations, depths)):
        if len(level) != depth:
            raise ValueError(f'dilations[{i}] has {len(level)} entries but level {i} has {depth} '
                             f'blocks; give one dilation per block')
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in level):
            raise ValueError(f'dilations[{i}] = {list(level)} must hold positive ints')
    return [list(level) for level in dilations]


class DiNAT(NAT):
    """Dilated Neighborhood Attention Transformer (`DiNAT <https://arxiv.org/abs/2209.15001>`_).

    NAT whose blocks alternate local (dilation 1) and sparse global (dilated) NA. Same arguments,
    module names and checkpoints as :class:`NAT`, plus:

    Args:
        dilations: a preset of :data:`DINAT_DILATIONS` (``'imagenet'`` (default, 224 px), ``'coco'``,
            ``'ade20k'``; for shallower levels the first ``depth`` entries of each level are used) or
            explicit per-block dilations (one list of positive ints per level, one entry per block).

    Large dilations on small maps: when ``kernel_size * dilation`` exceeds a level's map along an axis
    (e.g. the COCO preset's dilation 28 at stride 4 needs a 784 px side), a query attends to all the
    tokens of its dilation group along that axis (at most ``kernel_size`` of them) instead of failing;
    the dilation is not clamped. See :class:`~localattn.layers.NeighborhoodAttention2d`.
    """

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 dilations: Union[str, Sequence[Sequence[int]]] = 'imagenet', **kwargs) -> None:
        super().__init__(arch=arch, dilations=dilations, **kwargs)

    def _resolve_dilations(self, dilations) -> List[List[int]]:
        if isinstance(dilations, str):
            key = dilations.lower()
            if key not in DINAT_DILATIONS:
                raise ValueError(f'Unknown dilations preset {dilations!r}; choose one of '
                                 f'{sorted(DINAT_DILATIONS)} or pass per-block lists')
            preset = DINAT_DILATIONS[key]
            if len(self.depths) > len(preset) or any(
                    d > len(p) for d, p in zip(self.depths, preset)):
                raise ValueError(f'dilations preset {dilations!r} covers depths '
                                 f'{tuple(len(p) for p in preset)}, shorter than depths '
                                 f'{self.depths}; pass explicit dilations')
            return [list(p[:d]) for p, d in zip(preset, self.depths)]
        return _check_dilations(dilations, self.depths)
