#!/usr/bin/env python
"""Convert an official NAT / DiNAT ImageNet checkpoint into an mmpretrain checkpoint.

Usage::

    python tools/model_converters/nat_to_mmpretrain.py SRC DST

``SRC``: a checkpoint of the official release (SHI-Labs/Neighborhood-Attention-Transformer), keys
``patch_embed.*``, ``levels.{i}.*``, ``norm.*``, ``head.*``, possibly wrapped in ``state_dict`` /
``model`` or prefixed ``module.``. It is read with ``torch.load(weights_only=True)`` (no pickled code
runs). ``DST`` gets ``{'state_dict': {...}}`` with ``backbone.<same names>``, ``backbone.norm{L-1}.*``
(from ``norm.*``) and ``head.fc.{weight,bias}`` (from ``head.*``), tensors only, for::

    model = dict(type='ImageClassifier',
                 backbone=dict(type='NAT', arch='tiny', out_indices=(3, )),   # or DiNAT
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=1000, in_channels=512))

The architecture read off the weights is printed (dilations are not stored in weights: a DiNAT
checkpoint needs ``type='DiNAT'`` with the dilations it was trained with).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

import torch

try:
    import localattn  # noqa: F401  (installed package)
except ImportError:  # running from a source checkout
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                                'projects'))
    import localattn  # noqa: F401

from localattn.backbones import NAT  # noqa: E402
from localattn.checkpoint import load_local_checkpoint, unwrap_state_dict  # noqa: E402
from localattn.converters.nat import infer_arch, official_to_mmpretrain  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an official NAT/DiNAT classification checkpoint to mmpretrain')
    parser.add_argument('src', help='official checkpoint (local path)')
    parser.add_argument('dst', help='output mmpretrain checkpoint (.pth)')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    checkpoint = load_local_checkpoint(args.src, map_location='cpu')
    source = unwrap_state_dict(checkpoint)
    state_dict = official_to_mmpretrain(source)
    arch = infer_arch(source, presets=NAT.arch_zoo)
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)
    torch.save({'state_dict': state_dict}, args.dst)
    last = len(arch['depths']) - 1
    arch_arg = repr(arch['name']) if arch['name'] else repr({k: arch[k] for k in (
        'embed_dims', 'depths', 'num_heads', 'mlp_ratio', 'kernel_size')} | dict(
            layer_scale=1e-5 if arch['layer_scale'] else None))
    print(f'Converted {len(source)} tensors from {args.src} into {len(state_dict)} in {args.dst}')
    print(f'Architecture: {arch}')
    print('Use with: model = dict(type=\'ImageClassifier\', '
          f'backbone=dict(type=\'NAT\' (or \'DiNAT\'), arch={arch_arg}, out_indices=({last}, )), '
          'neck=dict(type=\'GlobalAveragePooling\'), '
          f"head=dict(type='LinearClsHead', num_classes={arch['num_classes']}, "
          f"in_channels={arch['embed_dims'] * 2 ** last}))")
    return state_dict


if __name__ == '__main__':
    main()
