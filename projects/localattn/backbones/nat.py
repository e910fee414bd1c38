"""NAT and DiNAT: hierarchical Neighborhood Attention Transformers (Hassani et al., CVPR 2023 / 2022).

One readable file: arch tables, tokenizer, block, level (stage + downsampler) and the two backbones.
Module names follow the official release (``patch_embed.proj.{0,1}``, ``levels.{i}.blocks.{j}.*``,
``levels.{i}.downsample.*``) so official ImageNet checkpoints load without renaming; the classification
``norm.*`` maps to the last output norm (:func:`localattn.converters.nat.official_to_backbone`).

Data flow is channels-last ``[B, H, W, C]`` inside the network; the outputs are NCHW.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model.weight_init import constant_init, trunc_normal_, trunc_normal_init
from torch import Tensor

from ..converters.nat import official_to_backbone
from ..layers import NeighborhoodAttention2d
from ..ops.na import BACKENDS
from .base import HierarchicalBackbone, checkpoint_blocks

__all__ = ['NAT', 'DiNAT', 'NAT_ARCHS', 'DINAT_ARCHS', 'DINAT_DILATIONS']

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

#: DiNAT variants (DiNAT paper and the official release): NAT's tables, except that DiNAT-Small has
#: no layer scale (NAT-Small has 1e-5), plus DiNAT-Large (kernel 7; the release also runs it with
#: kernel 11: ``DiNAT(arch='large', kernel_size=11)``). Head dim 32 everywhere.
DINAT_ARCHS: Dict[str, dict] = {
    **{name: dict(spec) for name, spec in NAT_ARCHS.items()},
    'small': dict(NAT_ARCHS['small'], layer_scale=None),
    'large': dict(embed_dims=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.,
                  layer_scale=None, drop_path_rate=0.35, kernel_size=7),
}

#: DiNAT per-block dilation presets (DiNAT paper and the official release), for depths (3, 4, 18, 5);
#: shallower levels use the first ``depth`` entries of each list.
#:
#: * ``imagenet``: classification at 224 px; ``imagenet-384``: DiNAT-Large at 384 px;
#: * ``coco``: detection (Mask / Cascade Mask R-CNN); ``ade20k``: UPerNet on 512 px crops;
#: * ``ade20k-640``: DiNAT-Large UPerNet on 640 px crops;
#: * ``mask2former``: DiNAT-Large (kernel 11) in Mask2Former.
DINAT_DILATIONS: Dict[str, List[List[int]]] = {
    'imagenet': [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1, 1, 1, 1, 1]],
    'imagenet-384': [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5],
    'coco': [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
    'ade20k': [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
    'ade20k-640': [[1, 20, 1], [1, 5, 1, 10], [1, 2, 1, 3, 1, 4, 1, 5] * 2 + [1, 5], [1, 2, 1, 2, 1]],
    'mask2former': [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3] * 4 + [1, 3], [1, 1, 1, 1, 1]],
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
        x = x.permute(0, 3, 1, 2)
        if x.shape[-1] == 1:
            # A one-column map: the kernel's outer columns see only padding, so the conv equals its centre
            # column with no horizontal padding. Computed that way because PyTorch's CPU bf16 convolution
            # (2.13, autocast) leaves the weight gradient of such all-padding taps uninitialised now and
            # then (NaN in ~9% of calls); the result and every gradient are the same.
            x = torch.nn.functional.conv2d(x, self.reduction.weight[..., 1:2], stride=2, padding=(1, 0))
        else:
            x = self.reduction(x)
        return self.norm(x.permute(0, 2, 3, 1))


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
                 norm_cfg: dict = dict(type='LN'), na_backend: str = 'auto') -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = NeighborhoodAttention2d(
            embed_dims, num_heads, kernel_size, dilation=dilation, qkv_bias=qkv_bias, rpb=True,
            attn_drop=attn_drop, proj_drop=drop, backend=na_backend)
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
    """A stage: ``blocks`` then the optional ``downsample``, built as ``downsample(embed_dims, norm_cfg)``
    (NAT's :class:`ConvDownsampler`, DiNAT_s's patch merging; None: no downsampler).

    Returns ``(features before the downsampler, input of the next level)``.
    """

    def __init__(self, embed_dims: int, depth: int, num_heads: int, kernel_size: int,
                 dilations: Sequence[int], drop_path: Sequence[float],
                 downsample: Optional[Callable[[int, dict], nn.Module]], norm_cfg: dict,
                 with_cp: bool = False, **block_kwargs) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.blocks = nn.ModuleList([
            NATBlock(embed_dims, num_heads, kernel_size, dilation=dilations[j],
                     drop_path=drop_path[j], norm_cfg=norm_cfg, **block_kwargs)
            for j in range(depth)
        ])
        self.downsample = downsample(embed_dims, norm_cfg) if downsample is not None else None

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = checkpoint_blocks(self.blocks, x, with_cp=self.with_cp)
        return x, (self.downsample(x) if self.downsample is not None else x)


def build_levels(widths: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 kernel_size: int, dilations: Sequence[Sequence[int]], drop_path_rate: float,
                 downsample: Callable[[int, dict], nn.Module], norm_cfg: dict, with_cp: bool,
                 **block_kwargs) -> nn.ModuleList:
    """One :class:`NATLevel` per entry of ``depths``, every one but the last ending with
    ``downsample``; stochastic depth increases linearly from 0 to ``drop_path_rate`` over all the
    blocks. ``block_kwargs`` go to every :class:`NATBlock`."""
    dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    levels = nn.ModuleList()
    start = 0
    for i, depth in enumerate(depths):
        levels.append(NATLevel(
            widths[i], depth, num_heads[i], kernel_size, dilations=dilations[i],
            drop_path=dpr[start:start + depth],
            downsample=downsample if i < len(depths) - 1 else None, norm_cfg=norm_cfg,
            with_cp=with_cp, **block_kwargs))
        start += depth
    return levels


def check_na_backend(na_backend: str) -> str:
    """The ``na_backend`` argument of the NA backbones: a ``backend`` of :func:`~localattn.ops.na.na2d`."""
    if na_backend not in BACKENDS:
        raise ValueError(f'na_backend must be one of {BACKENDS}, got {na_backend!r}')
    return na_backend


def release_init(model: nn.Module) -> None:
    """The official releases' init of an NA backbone: truncated normal (std 0.02) for linears and
    RPB tables, LN to (1, 0), layer-scale vectors to ``layer_scale``; convolutions keep PyTorch's
    default."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_init(module, std=.02, bias=0.)
        elif isinstance(module, nn.LayerNorm):
            constant_init(module, val=1., bias=0.)
        elif isinstance(module, NeighborhoodAttention2d) and module.rpb is not None:
            trunc_normal_(module.rpb, std=.02)
        elif isinstance(module, NATBlock) and module.layer_scale:
            nn.init.constant_(module.gamma1, module.layer_scale)
            nn.init.constant_(module.gamma2, module.layer_scale)


class PyramidNA(HierarchicalBackbone):
    """What :class:`NAT` / :class:`DiNAT` and :class:`~localattn.backbones.dinats.DiNATs` share: an
    arch of ``embed_dims``, ``depths``, ``num_heads``, ``kernel_size`` whose stage widths double at
    every stage, its checks, the release's init and the repr. Subclasses build the stem and stages."""

    #: How the error messages name the stages.
    stage_word = 'level'

    def __init__(self, spec: dict, out_indices: Sequence[int], frozen_stages: int, with_cp: bool,
                 init_cfg: Optional[dict]) -> None:
        super().__init__(spec, [spec['embed_dims'] * 2**i for i in range(len(spec['depths']))],
                         out_indices, frozen_stages, with_cp, init_cfg)
        self.embed_dims = spec['embed_dims']
        self.depths = spec['depths']
        self.num_heads = spec['num_heads']
        self.kernel_size = spec['kernel_size']

    @classmethod
    def check_arch(cls, spec: dict) -> dict:
        spec['depths'], spec['num_heads'] = tuple(spec['depths']), tuple(spec['num_heads'])
        depths, heads = spec['depths'], spec['num_heads']
        if not depths or len(depths) != len(heads):
            raise ValueError(f'arch depths {depths} and num_heads {heads} must be non-empty and of '
                             'equal length')
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f'arch depths must be positive ints, got {depths}')
        widths = [spec['embed_dims'] * 2**i for i in range(len(depths))]
        if any(h < 1 or c % h for c, h in zip(widths, heads)):
            raise ValueError(f'num_heads {heads} must divide the {cls.stage_word} widths {widths}')
        k = spec['kernel_size']
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f'kernel_size must be a positive int, got {k!r}')
        return spec

    def default_init(self) -> None:
        """Official init (:func:`release_init`): truncated normal (std 0.02) for linears and RPB
        tables, LN to (1, 0), layer-scale vectors to ``layer_scale``; convolutions keep PyTorch's
        default."""
        release_init(self)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, depths={self.depths}, num_heads={self.num_heads}, '
                f'kernel_size={self.kernel_size}, out_indices={self.out_indices}')


class NAT(PyramidNA):
    """Neighborhood Attention Transformer backbone (`NAT <https://arxiv.org/abs/2204.07143>`_).

    Tokenizer (two 3x3 s2 convs + LN, stride 4) -> 4 levels of pre-norm NA blocks, each level but the
    last followed by a 3x3 s2 conv downsampler (``C -> 2C``) + LN. Output ``i`` is level ``i``'s features
    before its downsampler, through its own LayerNorm ``norm{i}``, as NCHW with ``embed_dims * 2**i``
    channels at stride ``2**(i+2)``. Usable in mmdet, mmseg and mmpretrain (``out_indices=(3,)``
    with ``GlobalAveragePooling`` + ``LinearClsHead`` gives the official classifier). The interface
    (``out_indices``, ``frozen_stages``, ``with_cp``, ``num_features``, ``init_cfg``) is
    :class:`~localattn.backbones.base.HierarchicalBackbone`'s.

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
        out_indices: levels to return (negative indices allowed).
        frozen_stages: -1 freezes nothing; 0 freezes the tokenizer (``patch_embed``); ``n >= 1`` also
            the first ``n`` levels (with their downsamplers) and the output norms ``norm{i}``, ``i < n``.
            Frozen modules have ``requires_grad=False`` and stay in eval mode through ``train()``.
        norm_cfg: norm of every LayerNorm (``dict(type='LN')``; channels-last).
        with_cp: ``torch.utils.checkpoint`` each block (``use_reentrant=False``) to save memory.
        na_backend: the NA backend of every block (``backend`` of :func:`~localattn.ops.na.na2d`):
            ``'auto'`` (default; ``flex`` on CUDA), or e.g. ``'triton'`` for the fused CUDA kernels with
            RPB (in a config: ``model.backbone.na_backend='triton'``).
        init_cfg: None (truncated-normal init), a dict or a list. ``dict(type='Pretrained',
            checkpoint=PATH)`` with a checkpoint in the official layout (``levels.*``, ``norm.*``,
            ``head.*``; wrapped in ``state_dict``/``model`` and/or prefixed ``module.``/``backbone.``)
            or an mmpretrain conversion loads directly: ``head.*`` is dropped, ``norm.*`` becomes the
            last output norm (when returned), RPB tables are resized bicubically when ``kernel_size``
            differs, and the load report is logged (:meth:`load_pretrained`).

    Inputs of any size: the tokenizer and downsamplers use padding 1, so a map of size ``L`` becomes
    ``ceil(L / 2)`` (511x383 -> 128x96 at stride 4). **Small maps**: along an axis shorter than
    ``kernel_size * dilation``, :class:`~localattn.layers.NeighborhoodAttention2d` lets each query
    attend to all the tokens of its dilation group along that axis, running that axis with kernel
    ``ceil(L / dilation)`` (fewer than ``kernel_size`` keys; padding of less than ``dilation``
    positions is masked): no error and no zero keys. The official code instead zero-padded such maps
    to ``kernel_size * dilation`` without masking, so results on them differ slightly.

    Weight decay: parameter names contain ``norm`` for every LayerNorm (``norm1``, ``norm2``,
    ``patch_embed.norm``, ``downsample.norm``, ``norm{i}``), ``rpb`` for the relative positional
    bias tables and ``gamma`` for layer-scale vectors, so an optimizer wrapper with
    ``paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.),
    'gamma': dict(decay_mult=0.)})`` excludes exactly those from weight decay.
    """

    arch_zoo = NAT_ARCHS
    arch_required = ('embed_dims', 'depths', 'num_heads')
    arch_defaults = dict(mlp_ratio=3., layer_scale=None, drop_path_rate=0.1, kernel_size=7)
    stem_name = 'patch_embed'
    stages_name = 'levels'
    adapt_checkpoint = staticmethod(official_to_backbone)

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 kernel_size: Optional[int] = None, drop_path_rate: Optional[float] = None,
                 layer_scale: Optional[float] = None, qkv_bias: bool = True, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_cfg: dict = dict(type='LN'), with_cp: bool = False,
                 na_backend: str = 'auto', init_cfg: Optional[dict] = None, **kwargs) -> None:
        dilations = kwargs.pop('dilations', None)  # DiNAT's argument, passed through by DiNAT
        if kwargs:
            raise TypeError(f'{type(self).__name__} got unexpected arguments {sorted(kwargs)}')
        spec = self.resolve_arch(arch, kernel_size=kernel_size, drop_path_rate=drop_path_rate,
                                 layer_scale=layer_scale)
        super().__init__(spec, out_indices, frozen_stages, with_cp, init_cfg)
        self.dilations = self._resolve_dilations(dilations)

        self.patch_embed = ConvTokenizer(in_channels, self.embed_dims, norm_cfg)
        self.levels = build_levels(
            self.num_features, self.depths, self.num_heads, self.kernel_size, self.dilations,
            spec['drop_path_rate'], ConvDownsampler, norm_cfg, self.with_cp,
            mlp_ratio=spec['mlp_ratio'], qkv_bias=qkv_bias, drop=drop_rate,
            attn_drop=attn_drop_rate, layer_scale=spec['layer_scale'], na_backend=check_na_backend(na_backend))
        self.add_output_norms(norm_cfg)
        self._logged_adapted = False

    @classmethod
    def check_arch(cls, spec: dict) -> dict:
        spec = super().check_arch(spec)
        spec['layer_scale'] = float(spec['layer_scale']) if spec['layer_scale'] else None
        return spec

    def adapted_blocks(self, height: int, width: int) -> List[str]:
        """One line per block whose neighbourhood does not fit its map for a ``height x width``
        image (``kernel_size * dilation`` longer than a side): what it runs with instead."""
        lines = []
        h, w = -(-height // 4), -(-width // 4)  # the tokenizer: two stride-2 convs
        for i, level in enumerate(self.levels):
            for j, block in enumerate(level.blocks):
                attn = block.attn
                kernel, dilation, _ = attn.window(h, w)
                if kernel != attn.kernel_size or dilation != attn.dilation:
                    lines.append(f'level {i} ({h}x{w} map) block {j}: kernel {attn.kernel_size[0]} x '
                                 f'dilation {attn.dilation[0]} does not fit; runs with kernel '
                                 f'{kernel[0]}x{kernel[1]}, dilation {dilation[0]}x{dilation[1]}')
            h, w = -(-h // 2), -(-w // 2)  # the downsampler
        return lines

    def forward_stem(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if not self._logged_adapted and isinstance(height, int) and isinstance(width, int) \
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            lines = self.adapted_blocks(height, width)  # eager only: never a symbolic size
            if lines:
                self._logged_adapted = True
                print_log(f'{type(self).__name__}: for a {height}x{width} input, blocks whose '
                          'neighbourhood (kernel_size x dilation) is larger than their map attend to '
                          'their whole dilation group along the short side (logged once per model):\n  '
                          + '\n  '.join(lines), logger='current', level=20)
        return super().forward_stem(x)

    def _resolve_dilations(self, dilations) -> List[List[int]]:
        if dilations is not None:
            raise TypeError('NAT has no dilations; use DiNAT')
        return [[1] * d for d in self.depths]


def resolve_dilations(dilations: Union[str, Sequence[Sequence[int]]], depths: Sequence[int],
                      presets: Dict[str, List[List[int]]]) -> List[List[int]]:
    """Per-block dilations ``[[d, ...] per level]`` of ``dilations``: a key of ``presets`` (the first
    ``depth`` entries of each level's list) or explicit lists (one per level, one positive int per
    block). Raises ValueError naming the presets, levels and blocks allowed."""
    if isinstance(dilations, str):
        key = dilations.lower()
        if key not in presets:
            raise ValueError(f'Unknown dilations preset {dilations!r}; choose one of '
                             f'{sorted(presets)} or pass per-block lists')
        preset = presets[key]
        if len(depths) > len(preset) or any(d > len(p) for d, p in zip(depths, preset)):
            raise ValueError(f'dilations preset {dilations!r} covers depths '
                             f'{tuple(len(p) for p in preset)}, shorter than depths '
                             f'{tuple(depths)}; pass explicit dilations')
        return [list(p[:d]) for p, d in zip(preset, depths)]
    if (not isinstance(dilations, (list, tuple)) or len(dilations) != len(depths)
            or any(not isinstance(level, (list, tuple)) for level in dilations)):
        raise ValueError(f'dilations must be a preset name {sorted(presets)} or a list of '
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
    module names and checkpoints as :class:`NAT`, with its own arch table and dilations:

    Args:
        arch: ``'mini' | 'tiny' | 'small' | 'base' | 'large'`` (:data:`DINAT_ARCHS`: NAT's, but
            DiNAT-Small has no layer scale; DiNAT-Large is C 192, depths (3, 4, 18, 5), heads
            (6, 12, 24, 48), mlp ratio 2, drop path 0.35) or a dict as for :class:`NAT`.
            ``kernel_size=11`` with ``'large'`` gives the release's DiNAT-Large 11x11 (a kernel-7
            checkpoint loads with its RPB tables resized bicubically, as the release's "11x11interp"
            weights were made).
        dilations: a preset of :data:`DINAT_DILATIONS`: ``'imagenet'`` (default, 224 px),
            ``'imagenet-384'``, ``'coco'``, ``'ade20k'`` (512 px crops), ``'ade20k-640'``,
            ``'mask2former'`` (for shallower levels the first ``depth`` entries of each level are
            used), or explicit per-block dilations (one list of positive ints per level, one entry
            per block).

    Large dilations on small maps: when ``kernel_size * dilation`` exceeds a level's map along an axis
    (e.g. the COCO preset's dilation 28 at stride 4 needs a 784 px side), a query attends to all the
    tokens of its dilation group along that axis (``ceil(L / dilation)``, fewer than ``kernel_size``)
    instead of failing; the dilation is not clamped. See :class:`~localattn.layers.NeighborhoodAttention2d`.
    """

    arch_zoo = DINAT_ARCHS

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 dilations: Union[str, Sequence[Sequence[int]]] = 'imagenet', **kwargs) -> None:
        super().__init__(arch=arch, dilations=dilations, **kwargs)

    def _resolve_dilations(self, dilations) -> List[List[int]]:
        return resolve_dilations(dilations, self.depths, DINAT_DILATIONS)
