#!/usr/bin/env python
"""Tiling efficiency of the GPU neighbourhood-attention backends: query-key pairs computed vs needed.

Usage::

    python tools/analysis_tools/na_tiling_report.py [--out DIR] [--kernels 7 11]
    python tools/analysis_tools/na_tiling_report.py --quick
    python tools/analysis_tools/na_tiling_report.py --shapes 56x56 200x336:28 --kernels 7

A block-sparse or tiled kernel computes every query-key pair of every tile pair it visits, masked or
not. For each map (NAT stages at 224 and 800x1344 inputs, plus the dilated DiNAT layers at ImageNet
and COCO dilations) and kernel size this prints, for each GPU backend's tiling, the pairs it computes
divided by the pairs NA needs (``tokens x prod(kernel)``):

* ``flex (row-major, before)``: FlexAttention, 128-token blocks over row-major tokens (the former layout);
* ``flex (tile-major)``: FlexAttention on tile-major tokens (``ops/na/backends/flex.py``);
* ``triton``: ``computed_pairs`` of ``ops/na/backends/triton.py``, when that module provides it.

Everything is counted from the index tables on CPU; no kernel runs. Axes shorter than
``kernel x dilation`` run as the NA layer runs them (``short_axis``: the whole dilation group, padded);
such rows are marked. ``--out DIR`` writes ``na_tiling.md`` and ``na_tiling.csv``.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import os.path as osp
import sys
from typing import Callable, NamedTuple

try:
    import localattn  # noqa: F401
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'projects'))
    import localattn  # noqa: F401

from localattn.layers.neighborhood_attention import short_axis  # noqa: E402
from localattn.ops.na.backends import flex  # noqa: E402
from localattn.ops.na.indexing import AxisSpec  # noqa: E402

BACKENDS = ('flex (row-major, before)', 'flex (tile-major)', 'triton')
FIELDS = ('source', 'map', 'dilation', 'kernel', 'run_kernel', 'run_dilation', 'tokens', 'needed',
          'flex_row_pairs', 'flex_row_ratio', 'flex_tile_pairs', 'flex_tile_ratio',
          'triton_pairs', 'triton_ratio', 'note')
UNAVAILABLE = 'n/a (module not available)'


class Case(NamedTuple):
    source: str  # where the map / dilation comes from
    height: int
    width: int
    dilation: int


def standard_cases() -> list[Case]:
    """NAT stage maps at 224 and 800x1344 (dilation 1), then the DiNAT dilations at those maps."""
    stages = {'224': [(56, 56), (28, 28), (14, 14), (7, 7)],
              '800x1344': [(200, 336), (100, 168), (50, 84), (25, 42)]}
    cases = [Case(f'NAT {size} stage {s + 1}', h, w, 1) for size, maps in stages.items()
             for s, (h, w) in enumerate(maps)]
    # the distinct dilations > 1 of DiNAT per stage (official configs):
    # ImageNet 224 [[1,8,1],[1,4,1,4],[1,2]*9,[1]*5]; COCO [[1,28,1],[1,7,1,14],[1,3,1,5,1,7]*3,[1,3,1,3,1]]
    imagenet = [(1, 8), (2, 4), (3, 2)]
    coco = [(1, 28), (2, 7), (2, 14), (3, 3), (3, 5), (3, 7), (4, 3)]
    cases += [Case(f'DiNAT IN-1K 224 stage {s}', *stages['224'][s - 1], d) for s, d in imagenet]
    cases += [Case(f'DiNAT COCO 800x1344 stage {s}', *stages['800x1344'][s - 1], d) for s, d in coco]
    return cases


def quick_cases() -> list[Case]:
    return [Case('NAT 224 stage 1', 56, 56, 1), Case('NAT 800x1344 stage 1', 200, 336, 1),
            Case('DiNAT COCO 800x1344 stage 1', 200, 336, 28)]


def parse_shape(text: str) -> Case:
    """``HxW`` or ``HxW:d``."""
    size, _, d = text.partition(':')
    h, w = (int(x) for x in size.lower().split('x'))
    return Case('--shapes', h, w, int(d or 1))


def triton_counter() -> Callable | None:
    """``computed_pairs`` of the triton backend, or ``None`` when the module or function is missing."""
    try:
        module = importlib.import_module('localattn.ops.na.backends.triton')
    except Exception:  # not written yet, or its imports fail here
        return None
    return getattr(module, 'computed_pairs', None)


def run_axes(case: Case, kernel: int) -> tuple[tuple[AxisSpec, ...], str]:
    """The axes the NA layer runs for this map (short axes as in ``short_axis``) and a note."""
    axes, notes = [], []
    for name, length in (('H', case.height), ('W', case.width)):
        k, d, pad = short_axis(length, kernel, case.dilation)
        axes.append(AxisSpec(length + pad, k, d))
        if (k, d, pad) != (kernel, case.dilation, 0):
            notes.append(f'{name} short: k={k} d={d} pad={pad}')
    return tuple(axes), '; '.join(notes)


def ratio(pairs: int | None, needed: int) -> float | None:
    return None if pairs is None else pairs / needed


def measure(case: Case, kernel: int, triton: Callable | None) -> dict:
    axes, note = run_axes(case, kernel)
    needed = flex.needed_pairs(axes)
    row = flex.computed_pairs(axes, 'row')
    tile = flex.computed_pairs(axes, 'tile')
    tri, tri_note = None, ''
    if triton is None:
        tri_note = UNAVAILABLE
    else:
        try:
            tri = int(triton(axes))
        except Exception as exc:  # a shape the kernel does not cover
            tri_note = f'n/a ({type(exc).__name__}: {exc})'
    return dict(source=case.source, map=f'{case.height}x{case.width}', dilation=case.dilation, kernel=kernel,
                run_kernel=axes[0].kernel if axes[0].kernel == axes[1].kernel
                else f'{axes[0].kernel}x{axes[1].kernel}',
                run_dilation=axes[0].dilation if axes[0].dilation == axes[1].dilation
                else f'{axes[0].dilation}x{axes[1].dilation}',
                tokens=math.prod(ax.length for ax in axes), needed=needed,
                flex_row_pairs=row, flex_row_ratio=ratio(row, needed),
                flex_tile_pairs=tile, flex_tile_ratio=ratio(tile, needed),
                triton_pairs=tri if tri is not None else tri_note, triton_ratio=ratio(tri, needed),
                note=note)


def _cell(value) -> str:
    return f'{value:.1f}x' if isinstance(value, float) else str(value)


def markdown(rows: list[dict], command: str) -> str:
    lines = [f'Computed / needed query-key pairs (needed = tokens x k^2); `{command}`', '',
             '| source | map | d | k | needed (M) | ' + ' | '.join(BACKENDS) + ' | note |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        tri = _cell(r['triton_ratio']) if r['triton_ratio'] is not None else r['triton_pairs']
        lines.append(f"| {r['source']} | {r['map']} | {r['dilation']} | {r['kernel']} | "
                     f"{r['needed'] / 1e6:.2f} | {_cell(r['flex_row_ratio'])} | {_cell(r['flex_tile_ratio'])} | "
                     f"{tri} | {r['note']} |")
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', help='directory for na_tiling.md and na_tiling.csv')
    parser.add_argument('--kernels', type=int, nargs='+', default=[7, 11])
    parser.add_argument('--shapes', nargs='+', type=parse_shape, help='maps HxW[:dilation] instead of the standard set')
    parser.add_argument('--quick', action='store_true', help='56x56, 200x336 and 200x336:28 at k = 7 only')
    args = parser.parse_args(argv)
    cases = args.shapes or (quick_cases() if args.quick else standard_cases())
    kernels = [7] if args.quick and args.kernels == [7, 11] else args.kernels
    triton = triton_counter()
    rows = [measure(case, k, triton) for k in kernels for case in cases]
    command = 'python tools/analysis_tools/na_tiling_report.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, command.strip())
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(osp.join(args.out, 'na_tiling.md'), 'w') as f:
            f.write(text)
        with open(osp.join(args.out, 'na_tiling.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ('' if v is None else v) for k, v in r.items()})
    return rows


if __name__ == '__main__':
    main()
