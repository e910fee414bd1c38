"""The interface every localattn backbone shares (the one users know from mmdet/mmseg's Swin).

A backbone is a *stem* followed by *stages*; stage ``i`` returns ``(features, input of the next
stage)``, both channels-last ``[B, H, W, C_i]``. :class:`HierarchicalBackbone` gives, for any such
network:

* ``arch``: a preset name of the class's :attr:`~HierarchicalBackbone.arch_zoo` or a dict with the
  class's ``arch_required`` keys (and optionally those of ``arch_defaults``), validated by
  :meth:`~HierarchicalBackbone.resolve_arch`; the result is ``self.arch_settings``;
* ``num_features``: the channels of every stage; ``num_stages``;
* ``out_indices``: stages to return (negative indices allowed), each through its own norm
  ``norm{i}``, as NCHW maps; ``ValueError`` names the allowed values;
* ``frozen_stages``: ``-1`` freezes nothing, ``0`` the stem, ``n >= 1`` also stages ``0..n-1`` and
  their output norms; frozen modules have ``requires_grad=False`` and stay in eval mode through
  ``train()``;
* ``with_cp``: stages run their blocks through :func:`checkpoint_blocks`;
* ``init_cfg``: the family's default init, then any ``init_cfg`` entries (a dict or a list);
  ``dict(type='Pretrained', checkpoint=..., prefix=...)`` loads through
  :func:`localattn.checkpoint.load_weights` (with the class's :attr:`adapt_checkpoint` layout
  mapping) and logs the :class:`~localattn.checkpoint.LoadReport`; a checkpoint that fills less
  than half of the parameters raises unless the entry says ``allow_partial=True``.

A new family sets ``arch_zoo`` / ``arch_required`` / ``arch_defaults``, overrides
:meth:`check_arch` (family-specific validation), builds its stem and stages as ``self.<stem_name>``
and ``self.<stages_name>`` (an ``nn.ModuleList``), calls :meth:`add_output_norms` last, and
overrides :meth:`default_init` (and :meth:`forward_stem` when the stem needs more than a call).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule, initialize
from torch import Tensor

from ..checkpoint import MIN_LOADED_FRACTION, Adapter, LoadReport, load_weights

__all__ = ['HierarchicalBackbone', 'checkpoint_blocks']


def checkpoint_blocks(blocks: Sequence[nn.Module], x: Tensor, *args, with_cp: bool = False
                      ) -> Tensor:
    """``x = block(x, *args)`` for each block; with ``with_cp`` (and grads enabled) through
    non-reentrant ``torch.utils.checkpoint``, which saves activation memory for recomputation."""
    for block in blocks:
        if with_cp and torch.is_grad_enabled():
            x = cp.checkpoint(block, x, *args, use_reentrant=False)
        else:
            x = block(x, *args)
    return x


class HierarchicalBackbone(BaseModule):
    """Base class of the multi-stage backbones (see the module docstring).

    Args:
        arch_settings: the resolved arch (:meth:`resolve_arch`).
        num_features: channels of every stage.
        out_indices: stages to return.
        frozen_stages: ``-1`` .. ``num_stages``.
        with_cp: gradient checkpointing of every block.
        init_cfg: None, a dict or a list of dicts.
    """

    #: Preset name -> arch dict.
    arch_zoo: ClassVar[Dict[str, dict]] = {}
    #: Keys a custom arch dict must hold.
    arch_required: ClassVar[Tuple[str, ...]] = ()
    #: Optional keys of a custom arch dict, with their defaults.
    arch_defaults: ClassVar[Dict[str, Any]] = {}
    #: Attribute names of the stem module and of the stage ``ModuleList``.
    stem_name: ClassVar[str] = 'stem'
    stages_name: ClassVar[str] = 'stages'
    #: Checkpoint layout mapping used by :meth:`load_pretrained` (None: names already match).
    adapt_checkpoint: ClassVar[Optional[Adapter]] = None

    def __init__(self, arch_settings: dict, num_features: Sequence[int],
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3), frozen_stages: int = -1,
                 with_cp: bool = False, init_cfg: Union[dict, List[dict], None] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = arch_settings
        self.num_features = [int(c) for c in num_features]
        self.num_stages = len(self.num_features)
        self.out_indices = self._check_out_indices(out_indices)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) \
                or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'{type(self).__name__}: frozen_stages must be an int in '
                             f'[-1, {self.num_stages}], got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.with_cp = bool(with_cp)

    # ---------------------------------------------------------------------------------- arch
    @classmethod
    def resolve_arch(cls, arch: Union[str, dict], **overrides: Any) -> dict:
        """The full, validated arch dict of ``arch`` (a preset name or a dict), with the
        non-None ``overrides`` (constructor arguments that override arch entries) applied.

        Raises:
            ValueError: unknown preset, missing or unknown keys, or :meth:`check_arch` refusing.
        """
        name = cls.__name__
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(f'{name}: unknown arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_zoo)} or pass a dict with keys '
                                 f'{list(cls.arch_required)} (optional: {sorted(cls.arch_defaults)})')
            arch = cls.arch_zoo[arch.lower()]
        if not isinstance(arch, dict):
            raise ValueError(f'{name}: arch must be a str or a dict, got {type(arch).__name__}')
        missing = [key for key in cls.arch_required if key not in arch]
        unknown = sorted(set(arch) - set(cls.arch_required) - set(cls.arch_defaults))
        if missing or unknown:
            raise ValueError(f'{name}: arch dict is missing keys {missing} / has unknown keys '
                             f'{unknown}; required {list(cls.arch_required)}, optional '
                             f'{sorted(cls.arch_defaults)}')
        spec = {**copy.deepcopy(cls.arch_defaults), **copy.deepcopy(arch)}
        spec.update({key: value for key, value in overrides.items() if value is not None})
        return cls.check_arch(spec)

    @classmethod
    def check_arch(cls, spec: dict) -> dict:
        """Family-specific validation and normalisation of a merged arch dict (raise ValueError)."""
        return spec

    def _check_out_indices(self, out_indices: Union[int, Sequence[int]]) -> Tuple[int, ...]:
        n = self.num_stages
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        if not isinstance(out_indices, (list, tuple)) or not out_indices or any(
                isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n
                for i in out_indices):
            raise ValueError(f'{type(self).__name__}: out_indices must be a non-empty sequence of '
                             f'stage indices in [-{n}, {n}) (0..{n - 1}), got {out_indices!r}')
        normalised = sorted(i % n for i in out_indices)
        if len(set(normalised)) != len(normalised):
            raise ValueError(f'{type(self).__name__}: out_indices {tuple(out_indices)} name a stage '
                             'twice')
        return tuple(normalised)

    # --------------------------------------------------------------------------------- build
    def add_output_norms(self, norm_cfg: dict) -> None:
        """Add ``norm{i}`` for every returned stage, then apply ``frozen_stages``. Call it last."""
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._freeze_stages()

    # ------------------------------------------------------------------------------- forward
    def input_channels(self) -> Optional[int]:
        """Image channels the stem takes (its first convolution's), or None if it has none."""
        for module in getattr(self, self.stem_name).modules():
            if isinstance(module, nn.Conv2d):
                return module.in_channels
        return None

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` saying what is expected unless ``x`` is ``[B, C_in, H, W]``
        (NCHW) with ``H, W >= 1``; a channels-last (NHWC) or unbatched image is named as such."""
        channels = self.input_channels()
        name = type(self).__name__
        shape = tuple(x.shape)
        expects = f'{name} expects images as [B, C, H, W] (NCHW) with C = {channels}'
        if x.dim() != 4:
            hint = ''
            if x.dim() == 3 and shape[0] == channels:
                hint = ': one unbatched image? add the batch dimension with x[None]'
            elif x.dim() == 3 and shape[-1] == channels:
                hint = ': one unbatched channels-last image? use x.permute(2, 0, 1)[None]'
            raise ValueError(f'{expects}, got a {x.dim()}-D tensor of shape {shape}{hint}')
        if channels is not None and shape[1] != channels:
            if shape[-1] == channels:
                raise ValueError(f'{expects}, got shape {shape}, which looks channels-last (NHWC, '
                                 '[B, H, W, C]): convert it with x.permute(0, 3, 1, 2)')
            raise ValueError(f'{expects}, got {shape[1]} channels (shape {shape}); build the '
                             f'backbone with in_channels={shape[1]} for such images')
        if shape[2] < 1 or shape[3] < 1:
            raise ValueError(f'{expects} and H, W >= 1, got shape {shape}')

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> channels-last input of stage 0."""
        return getattr(self, self.stem_name)(x)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """``[B, C_in, H, W]`` -> tuple of NCHW maps, one per ``out_indices`` (in stage order)."""
        self.check_input(x)
        x = self.forward_stem(x)
        outs = []
        for i, stage in enumerate(getattr(self, self.stages_name)):
            features, x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(features).permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
        return tuple(outs)

    # ------------------------------------------------------------------------------- freezing
    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [getattr(self, self.stem_name)]
        stages = getattr(self, self.stages_name)
        for i in range(self.frozen_stages):
            frozen.append(stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'HierarchicalBackbone':
        super().train(mode)
        self._freeze_stages()
        return self

    # ------------------------------------------------------------------------- initialisation
    def default_init(self) -> None:
        """The family's own initialisation (the official release's), run by :meth:`init_weights`."""

    def init_weights(self) -> None:
        """:meth:`default_init`, then the ``init_cfg`` entries: ``Pretrained`` ones through
        :meth:`load_pretrained`, any other (e.g. ``TruncNormal``) through mmengine."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else \
            [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        self.default_init()
        if others:
            initialize(self, others)
        for cfg in pretrained:
            if 'checkpoint' not in cfg:
                raise ValueError("init_cfg type='Pretrained' needs a 'checkpoint' path")
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'),
                                 map_location=cfg.get('map_location', 'cpu'),
                                 allow_partial=cfg.get('allow_partial', False))
        self.is_init = True

    def load_pretrained(self, checkpoint: Union[str, dict], prefix: Optional[str] = None,
                        map_location: str = 'cpu', allow_partial: bool = False) -> LoadReport:
        """Load a checkpoint (path, URL or loaded dict) and log the report; see
        :func:`localattn.checkpoint.load_weights` (``backbone.``/``module.`` prefixes stripped,
        relative-position tables resized, other shape mismatches skipped).

        A checkpoint that fills less than half of the parameter values
        (:data:`~localattn.checkpoint.MIN_LOADED_FRACTION`) raises
        :class:`~localattn.checkpoint.PartialLoadError` unless ``allow_partial`` (``init_cfg``:
        ``dict(type='Pretrained', checkpoint=..., allow_partial=True)``); any incomplete load is
        logged at WARNING with the fraction loaded, a complete one at INFO."""
        adapt: Optional[Callable] = type(self).adapt_checkpoint
        report = load_weights(
            self, checkpoint, prefix=prefix, adapt=adapt, map_location=map_location,
            min_fraction=0.0 if allow_partial else MIN_LOADED_FRACTION,
            partial_hint="add allow_partial=True to the init_cfg entry: init_cfg=dict(type='Pretrained', "
            'checkpoint=..., allow_partial=True)')
        print_log(f'{type(self).__name__}: {report.format()}', logger='current',
                  level=20 if report.clean else 30)
        return report
