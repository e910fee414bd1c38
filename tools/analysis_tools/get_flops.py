#!/usr/bin/env python
"""Print the parameters and FLOPs of a config's model (mmdet, mmseg or mmpretrain).

Usage::

    python tools/analysis_tools/get_flops.py CONFIG [--shape 224 224] [--max-depth 3]
        [--cfg-options model.backbone.arch=small]

The model is built in the config's ``default_scope`` and run once, in ``mode='tensor'``, on a random
``1 x 3 x H x W`` input (``--shape H [W]``, default 224x224). FLOPs are multiply-adds counted by
mmengine's ``FlopAnalyzer`` with neighbourhood attention (and other registered attention ops)
counted analytically, as the papers do: see :mod:`localattn.analysis.complexity`. Detection heads
whose FLOPs depend on the number of proposals are counted for one forward of that input.
"""
from __future__ import annotations

import argparse
import inspect
import os.path as osp
import sys
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

try:
    import localattn  # noqa: F401  registers the backbones
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                                'projects'))
    import localattn  # noqa: F401

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from localattn.analysis import count_flops_params  # noqa: E402

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of a model config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input height [width] (default 224 224)')
    parser.add_argument('--max-depth', type=int, default=3, help='depth of the per-module table')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=small')
    return parser.parse_args(argv)


class _TensorMode(nn.Module):
    """Calls ``model(inputs, data_samples, mode='tensor')`` so one tensor input is enough."""

    def __init__(self, model: nn.Module, data_samples: Optional[List[Any]]) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.model(inputs, self.data_samples, mode='tensor')


def _data_samples(scope: str, height: int, width: int) -> Optional[List[Any]]:
    """Image metas that mmdet's tensor-mode forward reads (RPN/RoI heads); None elsewhere."""
    if scope != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1., 1.))
    return [DetDataSample(metainfo=meta)]


def build_model(cfg: Config) -> nn.Module:
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'config default_scope must be one of {SCOPES}, got {scope!r}')
    init_default_scope(scope)
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    model.eval()
    return model


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if len(args.shape) == 1:
        height = width = args.shape[0]
    elif len(args.shape) == 2:
        height, width = args.shape
    else:
        raise ValueError('--shape takes H or H W')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg)
    has_mode = 'mode' in inspect.signature(model.forward).parameters
    wrapped = _TensorMode(model, _data_samples(cfg.default_scope, height, width)) if has_mode \
        else model
    result = count_flops_params(wrapped, input_shape=(3, height, width), max_depth=args.max_depth)
    print(result['table'])
    line = '=' * 40
    print(f'{line}\nConfig: {args.config}\nInput shape: (1, 3, {height}, {width})\n'
          f'Params: {result["params"] / 1e6:.3f} M\nFLOPs (multiply-adds): '
          f'{result["flops"] / 1e9:.3f} G\n{line}')
    if result['unsupported_ops']:
        print('Not counted (elementwise or unsupported ops): '
              + ', '.join(f'{k} x{v}' for k, v in sorted(result['unsupported_ops'].items())))
    return result


if __name__ == '__main__':
    main()
