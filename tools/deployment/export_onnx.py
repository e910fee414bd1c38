#!/usr/bin/env python
"""Export a backbone to ONNX and check it against PyTorch with onnxruntime.

Usage::

    python tools/deployment/export_onnx.py MODEL [--shape H W] [--batch 1] [--opset 18]
        [--checkpoint CKPT] [--out work_dirs/onnx/MODEL.onnx] [--no-verify]

``MODEL`` is a preset (``nat-tiny``, ``dinat-tiny``, ``qnavit-tiny``, ``swin-t``, ...), a config file
(its ``model.backbone``) or ``Type[:key=value,...]``; see :mod:`localattn.analysis.models`.
``--checkpoint`` loads weights (a backbone state dict, or a detector/segmentor/classifier checkpoint
whose ``backbone.`` keys are used) through :func:`localattn.checkpoint.load_weights`, strictly: a
missing, unexpected or mismatched tensor is an error (relative-position tables are resized). The
exported graph has static shapes (those of ``--shape``); see :mod:`localattn.deploy` for how the
attention ops are exported. Exits with status 1 when the
onnxruntime outputs differ from PyTorch's by more than ``--atol + --rtol * max|torch|``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import time
from typing import Optional, Sequence

import torch

try:
    import localattn  # noqa: F401  registers the backbones
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'projects'))
    import localattn  # noqa: F401

from localattn.analysis.models import build_backbone  # noqa: E402
from localattn.checkpoint import load_weights  # noqa: E402
from localattn.deploy import DEFAULT_OPSET, MIN_OPSET, export_onnx, onnx_parity  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a backbone to ONNX and verify it with onnxruntime')
    parser.add_argument('model', help='preset name, config file or Type[:key=value,...]')
    parser.add_argument('--scope', default='mmdet', help='registry for Type specs (mmdet, mmseg, mmpretrain)')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224], help='input height [width]')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (>= {MIN_OPSET})')
    parser.add_argument('--checkpoint', help='weights to load (backbone or full-model checkpoint)')
    parser.add_argument('--out', help='output file (default work_dirs/onnx/<model>_<H>x<W>.onnx)')
    parser.add_argument('--no-verify', action='store_true', help='skip the onnxruntime parity check')
    parser.add_argument('--rtol', type=float, default=1e-4, help='tolerance relative to max |output|')
    parser.add_argument('--atol', type=float, default=1e-5)
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2) or min(args.shape) < 1:
        parser.error(f'--shape takes H or H W (positive ints), got {args.shape}')
    if args.batch < 1:
        parser.error(f'--batch must be positive, got {args.batch}')
    if args.opset < MIN_OPSET:
        parser.error(f'--opset must be >= {MIN_OPSET}, got {args.opset}')
    return args


def _step(message: str) -> float:
    """Print a progress line now (the export itself is silent for minutes) and return the time."""
    print(message, flush=True)
    return time.time()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    height, width = (args.shape * 2)[:2]
    start = _step(f'[1/4] building {args.model}')
    model = build_backbone(args.model, args.scope)
    params = sum(p.numel() for p in model.parameters())
    print(f'      {type(model).__name__}, {params / 1e6:.2f} M parameters ({time.time() - start:.1f} s)')
    if args.checkpoint:  # strict: every tensor of the model, in its shape (tables resized)
        start = _step(f'[2/4] loading {args.checkpoint}')
        report = load_weights(model, args.checkpoint, strict=True)
        print('      ' + report.format().replace('\n', '\n      '))
        print(f'      ({time.time() - start:.1f} s)')
    else:
        _step('[2/4] no --checkpoint: exporting the initial (random) weights')
    model.eval()
    inputs = torch.randn(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    name = osp.splitext(osp.basename(args.model))[0].replace(':', '_')
    out = args.out or osp.join('work_dirs', 'onnx', f'{name}_{height}x{width}.onnx')
    start = _step(f'[3/4] exporting to ONNX ({height}x{width}, batch {args.batch}, opset {args.opset}): '
                  'torch.export then ONNX conversion; this takes from seconds to several minutes for '
                  'large models')
    path = export_onnx(model, inputs, out, opset_version=args.opset)
    print(f'exported {args.model} ({height}x{width}, batch {args.batch}, opset {args.opset}) to {path} '
          f'({osp.getsize(path) / 2**20:.1f} MiB, {time.time() - start:.1f} s)', flush=True)
    if args.no_verify:
        return 0
    start = _step('[4/4] checking onnxruntime against PyTorch on the same input')
    ok = True
    for i, row in enumerate(onnx_parity(model, path, inputs)):
        good = row['max_abs'] <= args.atol + args.rtol * row['max_ref']
        ok &= good
        print(f"out{i} {row['shape']}: max |onnxruntime - torch| = {row['max_abs']:.3g} "
              f"({row['max_rel']:.3g} of max |torch|) {'ok' if good else 'MISMATCH'}")
    print(f'      ({time.time() - start:.1f} s)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
