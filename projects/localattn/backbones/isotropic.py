"""Isotropic NAT / DiNAT: ViT's single-resolution skeleton with (dilated) neighbourhood attention.

One readable file: arch table, backbones. The release's isotropic models (DiNAT paper, ablations
against ViT with relative positional bias) are a 16x16 stride-16 patch embedding + LayerNorm, 12
pre-norm blocks at stride 16 (no downsampling), a final LayerNorm, average pooling and a linear head.
``IsotropicNAT`` uses NA everywhere; ``IsotropicDiNAT`` dilates every odd block (dilation 2).

Module names follow the official release (``patch_embed.{proj,norm}``, ``layers.{j}.{norm1, attn.qkv,
attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2}``), so its checkpoints load without renaming; the
classifier's ``norm.*`` becomes the output norm of the last block
(:func:`localattn.converters.official.isotropic_to_backbone`).

Data flow is channels-last ``[B, H, W, C]`` inside the network; the outputs are NCHW.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..converters.official import isotropic_to_backbone
from .base import HierarchicalBackbone, checkpoint_blocks
from .dinats import PatchEmbed
from .nat import NATBlock, check_na_backend, release_init

__all__ = ['IsotropicNAT', 'IsotropicDiNAT', 'ISOTROPIC_ARCHS']

#: Official isotropic variants (ViT-S/B widths): 12 blocks, mlp ratio 4, head dim 32, kernel 7,
#: patch 16, no layer scale.
ISOTROPIC_ARCHS: Dict[str, dict] = {
    'small': dict(embed_dims=384, depth=12, num_heads=12, mlp_ratio=4., drop_path_rate=0.1,
                  kernel_size=7, patch_size=16),
    'base': dict(embed_dims=768, depth=12, num_heads=24, mlp_ratio=4., drop_path_rate=0.4,
                 kernel_size=7, patch_size=16),
}


class IsotropicNAT(HierarchicalBackbone):
    """Isotropic NAT: patch embedding then ``depth`` NA blocks at one resolution (stride ``patch_size``).

    For the base-class interface every block is a *stage* (``self.layers[j]``, all with
    ``embed_dims`` channels at stride ``patch_size``, as mmpretrain's ``VisionTransformer`` indexes
    its layers): ``out_indices`` picks blocks (default ``(-1,)``, the last), each returned through
    its own LayerNorm ``norm{j}`` as an NCHW map ``[B, C, ceil(H / 16), ceil(W / 16)]``. The
    classifier of the release is ``out_indices=(-1,)`` + ``GlobalAveragePooling`` +
    ``LinearClsHead(in_channels=embed_dims)`` in mmpretrain (its final ``norm`` is ``norm{depth-1}``).

    Args:
        arch: ``'small' | 'base'`` (:data:`ISOTROPIC_ARCHS`: C 384 / 768, heads 12 / 24) or a dict
            with ``embed_dims``, ``depth``, ``num_heads`` and optionally ``mlp_ratio`` (4),
            ``drop_path_rate`` (0.1), ``kernel_size`` (7), ``patch_size`` (16).
        in_channels: image channels.
        kernel_size: NA window size; None uses the arch's (7).
        drop_path_rate: stochastic depth, linear over the blocks from 0; None uses the arch's
            (0.1 / 0.4).
        qkv_bias: bias in the ``qkv`` projections.
        drop_rate: dropout after the attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        out_indices: blocks to return (negative indices allowed; default the last).
        frozen_stages: -1 freezes nothing; 0 the patch embedding; ``n >= 1`` also blocks
            ``0..n-1`` and their output norms (kept frozen and in eval mode through ``train()``).
        norm_cfg: every LayerNorm (``dict(type='LN')``).
        with_cp: ``torch.utils.checkpoint`` each block (``use_reentrant=False``).
        na_backend: the NA backend of every block, as :class:`~localattn.backbones.NAT`'s.
        init_cfg: None (truncated-normal init), a dict or a list. ``dict(type='Pretrained',
            checkpoint=PATH)`` loads an official isotropic checkpoint (``patch_embed.*``,
            ``layers.{j}.*``, ``norm.*``, ``head.*``), an mmpretrain conversion or a downstream
            checkpoint: ``head.*`` is dropped, ``norm.*`` becomes ``norm{depth-1}`` (when
            returned), RPB tables are resized when ``kernel_size`` differs, the report is logged.

    Inputs of any size (the release's model only took 224x224): the image is padded on the
    right/bottom to a multiple of ``patch_size``. **Small maps**: along an axis shorter than
    ``kernel_size * dilation`` tokens (sides under 97 px, or under 209 px for the blocks with
    dilation 2), each query attends to all the tokens of its dilation group along that axis,
    as :class:`~localattn.layers.NeighborhoodAttention2d` does (no error, dilation not clamped).

    Weight decay: ``norm`` is in every LayerNorm's name and ``rpb`` in every bias table's.
    """

    arch_zoo = ISOTROPIC_ARCHS
    arch_required = ('embed_dims', 'depth', 'num_heads')
    arch_defaults = dict(mlp_ratio=4., drop_path_rate=0.1, kernel_size=7, patch_size=16)
    stem_name = 'patch_embed'
    stages_name = 'layers'
    adapt_checkpoint = staticmethod(isotropic_to_backbone)

    def __init__(self, arch: Union[str, dict] = 'small', in_channels: int = 3,
                 kernel_size: Optional[int] = None, drop_path_rate: Optional[float] = None,
                 qkv_bias: bool = True, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 out_indices: Union[int, Sequence[int]] = (-1, ), frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False, na_backend: str = 'auto',
                 init_cfg: Optional[dict] = None, **kwargs) -> None:
        dilations = kwargs.pop('dilations', None)  # IsotropicDiNAT's argument
        if kwargs:
            raise TypeError(f'{type(self).__name__} got unexpected arguments {sorted(kwargs)}')
        spec = self.resolve_arch(arch, kernel_size=kernel_size, drop_path_rate=drop_path_rate)
        super().__init__(spec, [spec['embed_dims']] * spec['depth'], out_indices, frozen_stages,
                         with_cp, init_cfg)
        self.embed_dims = spec['embed_dims']
        self.depth = spec['depth']
        self.num_heads = spec['num_heads']
        self.kernel_size = spec['kernel_size']
        self.patch_size = spec['patch_size']
        self.dilations = self._resolve_dilations(dilations)

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, self.patch_size, norm_cfg)
        dpr = torch.linspace(0, spec['drop_path_rate'], self.depth).tolist()
        check_na_backend(na_backend)
        self.layers = nn.ModuleList([
            NATBlock(self.embed_dims, self.num_heads, self.kernel_size, dilation=self.dilations[j],
                     mlp_ratio=spec['mlp_ratio'], qkv_bias=qkv_bias, drop=drop_rate,
                     attn_drop=attn_drop_rate, drop_path=dpr[j], norm_cfg=norm_cfg, na_backend=na_backend)
            for j in range(self.depth)
        ])
        self.add_output_norms(norm_cfg)

    @classmethod
    def check_arch(cls, spec: dict) -> dict:
        for key in ('embed_dims', 'depth', 'num_heads', 'kernel_size', 'patch_size'):
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'arch {key} must be a positive int, got {value!r}')
        if spec['embed_dims'] % spec['num_heads']:
            raise ValueError(f"num_heads {spec['num_heads']} must divide embed_dims "
                             f"{spec['embed_dims']}")
        return spec

    def _resolve_dilations(self, dilations) -> List[int]:
        if dilations is not None:
            raise TypeError('IsotropicNAT has no dilations; use IsotropicDiNAT')
        return [1] * self.depth

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """``[B, C_in, H, W]`` -> one NCHW map ``[B, C, ceil(H/p), ceil(W/p)]`` per ``out_indices``."""
        self.check_input(x)
        x = self.patch_embed(x)
        outs = []
        for j, block in enumerate(self.layers):
            x = checkpoint_blocks([block], x, with_cp=self.with_cp)
            if j in self.out_indices:
                outs.append(getattr(self, f'norm{j}')(x).permute(0, 3, 1, 2).contiguous())
            if j == self.out_indices[-1]:
                break
        return tuple(outs)

    def default_init(self) -> None:
        """The release's init (:func:`~localattn.backbones.nat.release_init`): truncated normal
        (std 0.02) for linears and RPB tables, LN to (1, 0); the patch-embedding conv keeps PyTorch's
        default."""
        release_init(self)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, depth={self.depth}, num_heads={self.num_heads}, '
                f'kernel_size={self.kernel_size}, dilations={self.dilations}, '
                f'out_indices={self.out_indices}')


class IsotropicDiNAT(IsotropicNAT):
    """Isotropic DiNAT: :class:`IsotropicNAT` whose odd blocks use dilated NA.

    Args:
        dilations: an int ``d`` (default 2, the release's): blocks 1, 3, 5, ... get dilation ``d``,
            even blocks 1; or one positive int per block.

    Other arguments, module names and checkpoints as :class:`IsotropicNAT`.
    """

    def __init__(self, arch: Union[str, dict] = 'small',
                 dilations: Union[int, Sequence[int]] = 2, **kwargs) -> None:
        super().__init__(arch=arch, dilations=dilations, **kwargs)

    def _resolve_dilations(self, dilations) -> List[int]:
        def positive(d) -> bool:
            return not isinstance(d, bool) and isinstance(d, int) and d >= 1

        if positive(dilations):
            return [1 if j % 2 == 0 else dilations for j in range(self.depth)]
        if isinstance(dilations, (list, tuple)) and len(dilations) == self.depth \
                and all(positive(d) for d in dilations):
            return list(dilations)
        raise ValueError(f'dilations must be a positive int (the dilation of the odd blocks) or '
                         f'{self.depth} positive ints (one per block), got {dilations!r}')
