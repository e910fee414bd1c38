#!/usr/bin/env python
"""Plot training curves from mmengine's JSON scalar logs.

mmengine's ``LocalVisBackend`` writes ``<work_dir>/<timestamp>/vis_data/scalars.json``: one JSON
object per line, e.g. ``{"lr": 0.001, "loss": 1.2, "iter": 10, "step": 10}`` for training logs and
``{"mIoU": 41.2, "step": 300}`` (or ``"coco/bbox_mAP"``, ``"accuracy/top1"``) for validation.
Each requested key gets its own panel; each log file is one line per panel::

    python tools/analysis_tools/plot_curves.py work_dirs/demo/seg/*/vis_data/scalars.json \\
        --keys loss mIoU --out curves.png
    python tools/analysis_tools/plot_curves.py a/scalars.json b/scalars.json --keys loss \\
        --legend baseline ours --out cmp.png

A work directory (or a run directory inside it) is accepted instead of the JSON file: the newest
``*/vis_data/scalars.json`` below it is used. A key matches exactly or, failing that, as the
suffix after a ``/`` (``bbox_mAP`` finds ``coco/bbox_mAP``). Rendering uses matplotlib's Agg
backend, so no display is needed; ``--out`` picks the format from the suffix (png, pdf, svg).
"""
import argparse
import glob
import json
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

Series = Tuple[List[float], List[float]]


def find_scalars(path: str) -> str:
    """Return ``path`` if it is a file, else the newest ``scalars.json`` below the directory."""
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise FileNotFoundError(f'{path}: no such file or directory')
    candidates = [osp.join(path, 'scalars.json'), osp.join(path, 'vis_data', 'scalars.json')]
    candidates += sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    found = [c for c in candidates if osp.isfile(c)]
    if not found:
        raise FileNotFoundError(f'{path}: no scalars.json (expected <run>/vis_data/scalars.json)')
    return max(found, key=osp.getmtime)


def load_scalars(path: str) -> List[dict]:
    """Read one JSON object per line; blank or truncated lines (a run still writing) are skipped."""
    records = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def resolve_key(key: str, available: Sequence[str]) -> Optional[str]:
    """``key`` itself, or the unique available key ending in ``/key``."""
    if key in available:
        return key
    matches = [k for k in available if k.endswith('/' + key)]
    return matches[0] if len(matches) == 1 else None


def extract(records: List[dict], key: str, xaxis: str = 'step') -> Series:
    """``(x, y)`` of every record holding a finite number under ``key``."""
    xs, ys = [], []
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        x = record.get(xaxis, record.get('step', i))
        xs.append(float(x))
        ys.append(float(value))
    return xs, ys


def collect(paths: Sequence[str], keys: Sequence[str], xaxis: str = 'step') -> Dict[str, List[Series]]:
    """``{key: [series per log]}``; raises if a key is in none of the logs."""
    logs = [load_scalars(p) for p in paths]
    out = {}
    for key in keys:
        series = []
        for records in logs:
            available = sorted({k for r in records for k in r})
            real = resolve_key(key, available)
            series.append(extract(records, real, xaxis) if real else ([], []))
        if not any(xs for xs, _ in series):
            available = sorted({k for records in logs for r in records for k in r} - {'step'})
            raise KeyError(f'key {key!r} is in none of the logs; available: {available}')
        out[key] = series
    return out


def plot(data: Dict[str, List[Series]], labels: Sequence[str], out: str, title: Optional[str] = None,
         xlabel: str = 'iteration', dpi: int = 120) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = len(data)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, (key, series) in zip(axes.flat, data.items()):
        for (xs, ys), label in zip(series, labels):
            if not xs:
                continue
            # a metric logged once or twice (validation at the end) is drawn as markers
            style = dict(marker='o') if len(xs) <= 20 else {}
            ax.plot(xs, ys, label=label, **style)
            if len(xs) <= 3:
                for x, y in zip(xs, ys):
                    ax.annotate(f'{y:.4g}', (x, y), textcoords='offset points', xytext=(4, 4),
                                fontsize=8)
        ax.set_title(key)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if len(labels) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis('off')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot curves from mmengine scalars.json logs')
    parser.add_argument('logs', nargs='+',
                        help='scalars.json files (or work/run directories holding one)')
    parser.add_argument('--keys', nargs='+', default=['loss'],
                        help='scalar keys to plot, one panel each (default: loss)')
    parser.add_argument('--legend', nargs='+', help='one label per log (default: the run folder)')
    parser.add_argument('--xaxis', default='step', help='record key used as x (default: step)')
    parser.add_argument('--title', help='figure title')
    parser.add_argument('--out', default='curves.png', help='output image (default: curves.png)')
    parser.add_argument('--dpi', type=int, default=120)
    args = parser.parse_args(argv)
    if args.legend and len(args.legend) != len(args.logs):
        parser.error(f'--legend needs {len(args.logs)} labels, got {len(args.legend)}')
    return args


def _default_label(path: str) -> str:
    parts = osp.abspath(path).split(os.sep)
    if len(parts) >= 3 and parts[-2] == 'vis_data':  # <work_dir>/<timestamp>/vis_data/scalars.json
        return osp.join(parts[-4], parts[-3]) if len(parts) >= 4 else parts[-3]
    return osp.basename(osp.dirname(osp.abspath(path))) or path


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = [find_scalars(p) for p in args.logs]
    labels = args.legend or [_default_label(p) for p in paths]
    try:
        data = collect(paths, args.keys, args.xaxis)
    except KeyError as exc:
        print(f'error: {exc.args[0]}', file=sys.stderr)
        return 1
    out = plot(data, labels, args.out, title=args.title,
               xlabel='iteration' if args.xaxis in ('step', 'iter') else args.xaxis, dpi=args.dpi)
    print(f'saved {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
