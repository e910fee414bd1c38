"""Benchmark backbones side by side: images/s and peak memory, inference and training step.

    python tools/analysis_tools/benchmark_backbone.py                   # NAT/DiNAT/QnA-ViT-Tiny vs Swin-T, R-50
    python tools/analysis_tools/benchmark_backbone.py nat-small configs/nat/mask-rcnn_nat-tiny_fpn_1x_coco.py \\
        "NAT:arch='tiny',kernel_size=11" --sizes 224 --modes inference --baseline swin-t
    python tools/analysis_tools/benchmark_backbone.py --device cuda --amp bf16 --batch 64 2

Models are presets (``nat-tiny``, ``dinat-tiny``, ``qnavit-tiny``, ``swin-t``, ``resnet-50``, ...), config
files (their ``model.backbone``) or ``Type[:key=value,...]`` (see :mod:`localattn.analysis.models`);
the ``--baseline`` model is always added, so every run is a side-by-side comparison.

Cases: every model x size (``--sizes``, ``H`` or ``HxW``; batch ``--batch``, one value per size) x mode:

* ``inference``: ``model.eval()`` forward under ``no_grad``;
* ``train``: ``model.train()``, ``zero_grad(set_to_none=True)``, forward, backward of the sum of the
  output means (the optimizer step is left out: it does not depend on the architecture's layout).
  Train mode keeps each preset's detection settings (ResNet-50: frozen stem and stage 1, BN in eval
  mode; the others train everything with stochastic depth).

``--train-sizes`` picks the sizes that also get a training step (default: the first size only; the
detection size is measured for inference). Every case runs in a fresh interpreter (so CPU peak-memory
numbers do not disturb each other) and records wall and process CPU time (median and best of
``--repeats`` after one warm-up step) and the peak memory growth of one step (CPU: peak resident set;
CUDA: ``max_memory_allocated``). ``--rounds N`` runs the whole list N times, interleaved, and keeps the
best time of each case: on a shared machine this filters out bursts of load. Images/s are computed
from the best wall time (``--metric`` to change). Results: ``<out-dir>/backbone_results.csv``,
``backbone_summary.md`` (with images/s relative to the baseline), ``backbone_throughput.png``,
``backbone_memory.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import os.path as osp
import platform
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from bench_utils import measure_case, run_isolated  # noqa: E402

_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_MODELS = ('nat-tiny', 'dinat-tiny', 'qnavit-tiny')
MODES = ('inference', 'train')
FIELDS = ('model', 'size', 'batch', 'mode', 'status', 'images_per_s', 'images_per_s_median', 'time_ms',
          'time_min_ms', 'cpu_ms', 'cpu_min_ms', 'peak_mem_mb', 'params_m', 'repeats', 'compile_s', 'device',
          'threads', 'amp', 'compiled', 'note')
METRICS = {'time_min_ms': 'best wall time', 'time_ms': 'median wall time', 'cpu_min_ms': 'best CPU time',
           'cpu_ms': 'median CPU time'}
AMP = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_size(text: str) -> tuple[int, int]:
    """``'224'`` -> ``(224, 224)``; ``'800x1333'`` -> ``(800, 1333)`` (height x width)."""
    parts = text.lower().split('x')
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f'size must be H or HxW with positive ints, got {text!r}')
    return size


def size_name(size: tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


# ----------------------------------------------------------------------------------------------
# One case (runs in a fresh interpreter)
# ----------------------------------------------------------------------------------------------
def run_case(model: str, scope: str, height: int, width: int, batch: int, mode: str, device: str, threads: int,
             repeats: int, max_seconds: float, amp: str, compiled: bool) -> dict:
    """Build ``model`` and time one inference forward or training step on ``batch`` random images."""
    if _ROOT not in sys.path:  # a source checkout that was not pip-installed
        sys.path.insert(0, osp.join(_ROOT, 'projects'))
    from localattn.analysis.models import build_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build_backbone(model, scope).to(dev)
    train = mode == 'train'
    net.train(train)
    params = sum(p.numel() for p in net.parameters())
    images = torch.randn(batch, 3, height, width, device=dev)
    forward = torch.compile(net) if compiled else net
    dtype = AMP[amp]

    def fn(x: torch.Tensor) -> torch.Tensor:
        context = torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with context:
            if train:
                net.zero_grad(set_to_none=True)
            outs = forward(x)
            outs = outs if isinstance(outs, (tuple, list)) else (outs, )
            return sum(o.float().mean() for o in outs)

    compile_s = None
    if compiled:  # compile outside the measured steps
        start = time.perf_counter()
        for _ in range(2):
            if train:
                fn(images).backward()
            else:
                with torch.no_grad():
                    fn(images)
        compile_s = time.perf_counter() - start
    try:
        result = measure_case(lambda: (fn, [images]), backward=train, device=dev, repeats=repeats,
                              max_seconds=max_seconds)
    except torch.OutOfMemoryError as err:
        return dict(status='oom', note=str(err).splitlines()[0][:200], params_m=params / 1e6)
    result.update(params_m=params / 1e6, compile_s=compile_s)
    return result


# ----------------------------------------------------------------------------------------------
# Suite, summary, plots
# ----------------------------------------------------------------------------------------------
def cases(args: argparse.Namespace) -> list[dict]:
    models = list(dict.fromkeys([*args.models, args.baseline, *args.extra_baselines]))
    train_sizes = args.train_sizes if args.train_sizes is not None else args.sizes[:1]
    out = []
    for size, batch in zip(args.sizes, args.batch):
        for mode in args.modes:
            if mode == 'train' and size not in train_sizes:
                continue
            for model in models:
                out.append(dict(model=model, size=size_name(size), batch=batch, mode=mode))
    return out


def run_suite(args: argparse.Namespace) -> list[dict]:
    best: dict[tuple, dict] = {}
    todo = cases(args)
    for round_ in range(args.rounds):
        for i, case in enumerate(todo):
            height, width = parse_size(case['size'])
            kwargs = dict(model=case['model'], scope=args.scope, height=height, width=width, batch=case['batch'],
                          mode=case['mode'], device=args.device, threads=args.threads, repeats=args.repeats,
                          max_seconds=args.max_seconds, amp=args.amp, compiled=args.compile)
            result = run_isolated(osp.abspath(__file__), 'run_case', kwargs, timeout=args.timeout)
            row = dict(case, device=args.device, threads=args.threads, amp=args.amp, compiled=args.compile, **result)
            if row['status'] == 'ok':
                row['images_per_s'] = row['batch'] * 1e3 / row[args.metric]
                row['images_per_s_median'] = row['batch'] * 1e3 / row[args.metric.replace('_min', '')]
            key = (case['model'], case['size'], case['mode'])
            kept = best.get(key)
            if kept is None or (row['status'] == 'ok' and (kept['status'] != 'ok' or
                                                           row[args.metric] < kept[args.metric])):
                best[key] = row
            print(f"[round {round_ + 1}/{args.rounds}, {i + 1}/{len(todo)}] {_line(row)}", flush=True)
    return [best[(c['model'], c['size'], c['mode'])] for c in todo]


def _line(row: dict) -> str:
    head = f"{row['model']:<14} {row['size']:>9} b{row['batch']:<3} {row['mode']:<9}"
    if row['status'] != 'ok':
        return f"{head} {row['status']}: {row.get('note', '')}"
    return (f"{head} {row['images_per_s']:8.2f} img/s (median {row['images_per_s_median']:.2f}) "
            f"peak {row['peak_mem_mb']:8.0f} MB")


def _typed(row: dict) -> dict:
    out = dict(row)
    out['batch'] = int(row['batch'])
    for key in ('images_per_s', 'images_per_s_median', 'time_ms', 'time_min_ms', 'cpu_ms', 'cpu_min_ms',
                'peak_mem_mb', 'params_m', 'compile_s'):
        out[key] = float(row[key]) if row.get(key) not in (None, '') else None
    return out


def summary(rows: list[dict], baseline: str, metric: str, header: str = '') -> str:
    """Markdown tables, one per (size, mode): images/s, relative to the baseline, peak memory."""
    lines = [header] if header else []
    groups = list(dict.fromkeys((r['size'], r['batch'], r['mode']) for r in rows))
    for size, batch, mode in groups:
        group = [r for r in rows if (r['size'], r['batch'], r['mode']) == (size, batch, mode)]
        base = next((r for r in group if r['model'] == baseline and r['status'] == 'ok'), None)
        what = 'inference (forward, no grad)' if mode == 'inference' else 'training step (forward + backward)'
        lines += ['', f'**{size}, batch {batch}, {what}**', '',
                  f'| model | params (M) | images/s | images/s (median) | vs {baseline} | peak memory (MB) |',
                  '|---|---:|---:|---:|---:|---:|']
        for r in group:
            if r['status'] != 'ok':
                lines.append(f"| {r['model']} | | {r['status']} | | | |")
                continue
            ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else 'n/a'
            lines.append(f"| {r['model']} | {r['params_m']:.1f} | {r['images_per_s']:.2f} | "
                         f"{r['images_per_s_median']:.2f} | {ratio} | {r['peak_mem_mb']:.0f} |")
    lines += ['', f'images/s from the {METRICS[metric]} of the repeats; "vs" compares that with the baseline '
              'measured in the same run.']
    return '\n'.join(lines)


def plot(rows: list[dict], out_dir: str, baseline: str) -> None:
    """``backbone_throughput.png`` (images/s relative to the baseline) and ``backbone_memory.png``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r['size'], r['batch'], r['mode']) for r in rows))
    models = list(dict.fromkeys(r['model'] for r in rows))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for name, key, label in (('backbone_throughput.png', 'images_per_s', f'images/s relative to {baseline}'),
                             ('backbone_memory.png', 'peak_mem_mb', 'peak memory growth (MB)')):
        fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups) + 0.6, 0.32 * len(models) + 1.6),
                                 dpi=80, squeeze=False)
        for ax, (size, batch, mode) in zip(axes[0], groups):
            group = [r for r in rows if (r['size'], r['batch'], r['mode']) == (size, batch, mode)
                     and r['status'] == 'ok']
            base = next((r[key] for r in group if r['model'] == baseline), None)
            names = [r['model'] for r in group][::-1]
            values = [r[key] / base if key == 'images_per_s' and base else r[key] for r in group][::-1]
            labels = [n if len(n) <= 24 else n[:21] + '...' for n in names]
            ax.barh(range(len(names)), values, color=[colours[n] for n in names])
            ax.set_yticks(range(len(names)), labels)
            for y, v in enumerate(values):
                ax.text(v, y, f' {v:.2f}' if key == 'images_per_s' else f' {v:.0f}', va='center', fontsize=7)
            if key == 'images_per_s' and base:
                ax.axvline(1.0, color='grey', lw=0.8, ls='--')
            ax.set_title(f"{size} b{batch} {mode}", fontsize=9)
            ax.set_xlabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlim(0, max(values + [1.0]) * 1.25)
        fig.tight_layout()
        fig.savefig(osp.join(out_dir, name))
        plt.close(fig)


def _machine(args: argparse.Namespace) -> str:
    if args.device.startswith('cuda') and torch.cuda.is_available():
        what = torch.cuda.get_device_name(torch.device(args.device))
    else:
        what = f'{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs'
    return (f'{args.device} ({what}), torch {torch.__version__}, {args.threads} threads, amp {args.amp}, '
            f"{'torch.compile' if args.compile else 'eager'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('models', nargs='*', default=list(DEFAULT_MODELS),
                        help='presets, config files or Type[:key=value,...] (default: %(default)s)')
    parser.add_argument('--baseline', default='swin-t', help='reference model, always included')
    parser.add_argument('--extra-baselines', nargs='*', default=['resnet-50'], help='also included')
    parser.add_argument('--scope', default='mmdet', help='registry of Type specs')
    parser.add_argument('--sizes', type=parse_size, nargs='+', default=[(224, 224), (800, 1333)],
                        help='H or HxW per size (default 224 800x1333)')
    parser.add_argument('--batch', type=int, nargs='+', default=None,
                        help='batch per size (default 8 for sides <= 512, else 1)')
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--train-sizes', type=parse_size, nargs='*', default=None,
                        help='sizes that also get a training step (default: the first size)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', choices=tuple(AMP), default='none', help='autocast dtype')
    parser.add_argument('--compile', action='store_true', help='torch.compile every model (compile time excluded)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch intra-op threads')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=1, help='run the list N times, keep the best of each case')
    parser.add_argument('--max-seconds', type=float, default=60.0, help='time budget of the repeats of one case')
    parser.add_argument('--metric', choices=tuple(METRICS), default='time_min_ms', help='time behind images/s')
    parser.add_argument('--timeout', type=float, default=1800.0, help='seconds per case before giving up')
    parser.add_argument('--out-dir', default='work_dirs/benchmarks/backbone')
    parser.add_argument('--from-csv', help='re-summarise and re-plot an existing backbone_results.csv')
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = [8 if max(s) <= 512 else 1 for s in args.sizes]
    if len(args.batch) == 1:
        args.batch = args.batch * len(args.sizes)
    if len(args.batch) != len(args.sizes) or min(args.batch) < 1:
        parser.error(f'--batch takes one positive int per size ({len(args.sizes)}), got {args.batch}')
    if args.rounds < 1 or args.repeats < 1 or args.threads < 1:
        parser.error('--rounds, --repeats and --threads must be positive')
    if args.amp != 'none' and not args.device.startswith('cuda'):
        parser.error('--amp is meant for CUDA; on CPU use the default fp32')
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = osp.join(args.out_dir, 'backbone_results.csv')
    if args.from_csv:
        with open(args.from_csv, encoding='utf-8') as f:
            rows = [_typed(r) for r in csv.DictReader(f)]
    else:
        rows = run_suite(args)
        with open(csv_path, 'w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)
    text = summary(rows, args.baseline, args.metric, header=f'Device: {_machine(args)}')
    with open(osp.join(args.out_dir, 'backbone_summary.md'), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    plot(rows, args.out_dir, args.baseline)
    print(text)
    return rows


if __name__ == '__main__':
    main()
