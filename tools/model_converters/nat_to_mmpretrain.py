#!/usr/bin/env python
"""Convert an official NAT / DiNAT / DiNAT_s / isotropic ImageNet checkpoint into an mmpretrain checkpoint.

Usage::

    python tools/model_converters/nat_to_mmpretrain.py SRC DST

``SRC``: a classification checkpoint of the official release (SHI-Labs/Neighborhood-Attention-Transformer),
possibly wrapped in ``state_dict`` / ``model`` or prefixed ``module.``, in one of its three layouts,
detected from the keys (:func:`localattn.converters.official.detect_layout`):

* NAT / DiNAT (incl. DiNAT-Large): ``patch_embed.*``, ``levels.{i}.*``, ``norm.*``, ``head.*``;
* DiNAT_s: ``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``, ``norm.*``, ``head.*``;
* isotropic NAT / DiNAT: ``patch_embed.*``, ``layers.{j}.*``, ``norm.*``, ``head.*``.

It is read with ``torch.load(weights_only=True)`` (no pickled code runs). ``DST`` gets
``{'state_dict': {...}}`` with ``backbone.<same names>``, ``backbone.norm{L-1}.*`` (from ``norm.*``;
``L`` stages, or blocks for the isotropic models) and ``head.fc.{weight,bias}`` (from ``head.*``),
tensors only, for::

    model = dict(type='ImageClassifier',
                 backbone=dict(type='NAT', arch='tiny', out_indices=(3, )),   # or DiNAT / DiNATs
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=1000, in_channels=512))

(isotropic: ``backbone=dict(type='IsotropicNAT', arch='small')`` or ``IsotropicDiNAT``, whose
default ``out_indices`` is the last block, and ``in_channels=embed_dims``). The architecture read off
the weights is printed with the matching preset. Dilations are not stored in weights: a DiNAT /
DiNAT_s / isotropic DiNAT checkpoint needs the dilated class with the dilations it was trained with.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import Optional

import torch

try:
    import localattn  # noqa: F401  (installed package)
except ImportError:  # running from a source checkout
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                                'projects'))
    import localattn  # noqa: F401

from localattn.backbones import NAT, DiNAT, DiNATs, IsotropicNAT  # noqa: E402
from localattn.checkpoint import load_local_checkpoint, unwrap_state_dict  # noqa: E402
from localattn.converters import official  # noqa: E402
from localattn.converters.nat import infer_arch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an official NAT/DiNAT/DiNAT_s/isotropic classification checkpoint to '
        'mmpretrain')
    parser.add_argument('src', help='official checkpoint (local path)')
    parser.add_argument('dst', help='output mmpretrain checkpoint (.pth)')
    return parser.parse_args(argv)


def _preset(spec: dict, zoo: dict, keys) -> Optional[str]:
    return next((name for name, arch in zoo.items() if all(arch[k] == spec[k] for k in keys)), None)


def _usage_nat(source) -> str:
    arch = infer_arch(source, presets=NAT.arch_zoo)
    dinat = infer_arch(source, presets=DiNAT.arch_zoo)['name']
    last = len(arch['depths']) - 1
    arch_arg = repr(arch['name']) if arch['name'] else repr({k: arch[k] for k in (
        'embed_dims', 'depths', 'num_heads', 'mlp_ratio', 'kernel_size')} | dict(
            layer_scale=1e-5 if arch['layer_scale'] else None))
    types = f"type='NAT', arch={arch_arg}" + (
        f" (or type='DiNAT', arch={dinat!r})" if dinat else " (or 'DiNAT')")
    print(f'Architecture: {arch}')
    return (f'backbone=dict({types}, out_indices=({last}, )), '
            'neck=dict(type=\'GlobalAveragePooling\'), '
            f"head=dict(type='LinearClsHead', num_classes={arch['num_classes']}, "
            f"in_channels={arch['embed_dims'] * 2 ** last}))")


def _usage_official(source) -> str:
    arch = official.infer_arch(source)
    print(f'Architecture: {arch}')
    if arch['layout'] == 'dinats':
        keys = ('embed_dims', 'depths', 'num_heads', 'mlp_ratio', 'kernel_size')
        name = _preset(arch, DiNATs.arch_zoo, keys)
        last = len(arch['depths']) - 1
        backbone = (f"type='DiNATs', arch={name or {k: arch[k] for k in keys}!r}, "
                    f'out_indices=({last}, )')
        channels = arch['embed_dims'] * 2 ** last
    else:
        keys = ('embed_dims', 'depth', 'num_heads', 'mlp_ratio', 'kernel_size', 'patch_size')
        name = _preset(arch, IsotropicNAT.arch_zoo, keys)
        backbone = (f"type='IsotropicNAT' (or 'IsotropicDiNAT'), "
                    f"arch={name or {k: arch[k] for k in keys}!r}")
        channels = arch['embed_dims']
    return (f'backbone=dict({backbone}), neck=dict(type=\'GlobalAveragePooling\'), '
            f"head=dict(type='LinearClsHead', num_classes={arch['num_classes']}, "
            f'in_channels={channels}))')


def main(argv=None) -> dict:
    args = parse_args(argv)
    checkpoint = load_local_checkpoint(args.src, map_location='cpu')
    source = unwrap_state_dict(checkpoint)
    layout = official.detect_layout(source)
    if layout is None:
        raise SystemExit(f'{args.src}: not a checkpoint of the NAT release (no levels.* / layers.* '
                         f'keys; first keys: {list(source)[:5]})')
    state_dict = official.to_mmpretrain(source)
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)
    torch.save({'state_dict': state_dict}, args.dst)
    print(f'Converted {len(source)} tensors ({layout!r} layout) from {args.src} into '
          f'{len(state_dict)} in {args.dst}')
    usage = _usage_nat(source) if layout == 'nat' else _usage_official(source)
    print(f"Use with: model = dict(type='ImageClassifier', {usage}")
    return state_dict


if __name__ == '__main__':
    main()
