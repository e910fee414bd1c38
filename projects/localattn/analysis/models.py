"""Build a backbone from a short spec, for the benchmark and export tools.

A spec is one of

* a preset name of :data:`PRESETS` (``nat-tiny``, ``dinat-tiny``, ``qnavit-tiny``, ``swin-t``,
  ``resnet-50``, ...): the backbone settings of this project's (and mmdet's) detection configs;
* a config file (``*.py``): its ``model.backbone``, built in the config's ``default_scope``;
* a registered type with optional keyword arguments, ``Type`` or ``Type:key=value,key=value``
  (values are Python literals, anything else a string), e.g. ``NAT:arch='small',kernel_size=9``,
  built in the registry of ``scope``.

The backbone's ``init_cfg`` is dropped (no pretrained weights are read); weights are the random
initialisation unless a checkpoint is loaded afterwards.
"""
from __future__ import annotations

import ast
import copy
import os.path as osp

from torch import nn

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')

_SWIN = dict(type='SwinTransformer', embed_dims=96, window_size=7, mlp_ratio=4, qkv_bias=True,
             patch_norm=True, out_indices=(0, 1, 2, 3))
_RESNET = dict(type='ResNet', num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
               norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch')

#: ``name -> backbone config`` (built in mmdet's registry); the settings of the Mask R-CNN configs.
PRESETS: dict[str, dict] = {
    **{f'nat-{a}': dict(type='NAT', arch=a, drop_path_rate=r)
       for a, r in (('mini', 0.2), ('tiny', 0.2), ('small', 0.3), ('base', 0.5))},
    **{f'dinat-{a}': dict(type='DiNAT', arch=a, dilations='coco', drop_path_rate=r)
       for a, r in (('mini', 0.2), ('tiny', 0.2), ('small', 0.3), ('base', 0.5))},
    **{f'qnavit-{a}': dict(type='QnAViT', arch=a, drop_path_rate=r)
       for a, r in (('tiny', 0.1), ('small', 0.2), ('base', 0.3))},
    'swin-t': dict(_SWIN, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    'swin-s': dict(_SWIN, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    'swin-b': dict(_SWIN, embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                   drop_path_rate=0.3),
    'resnet-50': dict(_RESNET, depth=50),
    'resnet-101': dict(_RESNET, depth=101),
}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_spec(spec: str, scope: str = 'mmdet') -> tuple[str, dict]:
    """``(scope, backbone config)`` of ``spec`` (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f'model spec must be a non-empty string, got {spec!r}')
    if scope not in SCOPES:
        raise ValueError(f'scope must be one of {SCOPES}, got {scope!r}')
    if spec.lower() in PRESETS:
        return 'mmdet', copy.deepcopy(PRESETS[spec.lower()])
    if spec.endswith('.py'):
        if not osp.isfile(spec):
            raise ValueError(f'config file {spec!r} does not exist')
        from mmengine.config import Config
        cfg = Config.fromfile(spec)
        backbone = cfg.get('model', {}).get('backbone')
        if backbone is None:
            raise ValueError(f'config {spec!r} has no model.backbone')
        cfg_scope = cfg.get('default_scope', scope)
        if cfg_scope not in SCOPES:
            raise ValueError(f'config default_scope must be one of {SCOPES}, got {cfg_scope!r}')
        return cfg_scope, backbone.to_dict() if hasattr(backbone, 'to_dict') else dict(backbone)
    name, _, args = spec.partition(':')
    if not name.isidentifier():
        raise ValueError(f'model spec {spec!r} is neither a preset ({", ".join(PRESETS)}), a config '
                         'file (*.py) nor "Type[:key=value,...]"')
    cfg = dict(type=name)
    for item in filter(None, (a.strip() for a in _split_args(args))):
        key, eq, value = item.partition('=')
        if not eq or not key.strip().isidentifier():
            raise ValueError(f'model spec {spec!r}: expected key=value, got {item!r}')
        cfg[key.strip()] = _literal(value.strip())
    return scope, cfg


def _split_args(text: str) -> list[str]:
    """Split ``a=1,b=(1, 2),c='x'`` at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def build_backbone(spec: str, scope: str = 'mmdet', **overrides) -> nn.Module:
    """Build the backbone of ``spec``; ``overrides`` update its config (e.g. ``out_indices=(3,)``)."""
    import importlib

    from mmengine.registry import DefaultScope

    import localattn  # noqa: F401  registers the localattn backbones
    scope, cfg = parse_spec(spec, scope)
    cfg.pop('init_cfg', None)
    cfg.pop('_delete_', None)
    cfg.update(overrides)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):  # restored afterwards: no global side effect
        return registry.build(cfg)
