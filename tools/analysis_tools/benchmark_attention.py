"""Benchmark neighbourhood attention against the attention baselines (time and peak memory).

    python tools/analysis_tools/benchmark_attention.py                      # defaults: CPU, fp32
    python tools/analysis_tools/benchmark_attention.py --resolutions 56 112 --kernels 7 --repeats 3
    python tools/analysis_tools/benchmark_attention.py --suite qna          # QnA suite (separate module)

Every case (method x resolution x kernel x mode) runs in a fresh interpreter (``bench_utils.run_isolated``)
so that CPU peak-memory numbers (growth of the peak resident set) do not disturb each other; on CUDA
the peak is ``torch.cuda.max_memory_allocated``. Modes: ``forward`` (under ``no_grad``) and ``train``
(forward + backward w.r.t. q, k, v and the bias table). All methods read and write heads-last maps
``[B, H, W, heads, head_dim]``; layout changes they need are timed.

Methods:
  na-tiled        ``na2d(backend='tiled')``: the compiled CPU kernel (pure-torch tiles where unavailable).
  na-tiled-torch  the pure-torch tiles (``LOCALATTN_NA_NATIVE=0``).
  na-gather       ``na2d(backend='reference')``: gathers the k*k neighbours of every query.
  na-flex         ``na2d(backend='flex')`` (CUDA only).
  natten          ``natten.na2d`` when installed (no RPB: NATTEN has none).
  sdpa-masked     dense SDPA with a boolean N x N neighbourhood mask (no RPB).
  window          Swin-style attention in non-overlapping kernel x kernel windows (pad, partition,
                  SDPA with the RPB as additive mask, reverse, crop).
  sdpa-full       dense SDPA over all pixels (kernel ignored).

Each case records wall and CPU time (median and best of ``--repeats``, fewer when they would exceed
``--max-seconds``) and peak memory. On a machine shared with other jobs, ``--threads 1 --metric
cpu_min_ms`` gives the most stable comparison. Cases whose estimated memory exceeds ``--mem-budget-gb``
are recorded as skipped. Results go to ``<out-dir>/na_results.csv``, plots ``na_time.png``,
``na_memory.png``, ``na_kernels.png`` (``--metric``) and the acceptance ratios to ``na_summary.md``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import os.path as osp
import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from bench_utils import DTYPES, METRICS, add_run_args, add_shape_args, format_case, lookup, measure_case, run_isolated  # noqa: E402

METHODS = ('na-tiled', 'na-tiled-torch', 'na-gather', 'na-flex', 'natten', 'sdpa-masked', 'window', 'sdpa-full')
FIELDS = ('method', 'resolution', 'kernel', 'mode', 'status', 'time_ms', 'time_min_ms', 'cpu_ms', 'cpu_min_ms',
          'peak_mem_mb', 'repeats', 'batch', 'heads', 'head_dim', 'rpb', 'dtype', 'device', 'threads', 'note')


def _window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, rpb: Tensor | None) -> Tensor:
    """Swin-style attention in non-overlapping ``window x window`` windows of ``[B, H, W, h, c]`` maps."""
    b, height, width, heads, c = q.shape
    pad_h, pad_w = -height % window, -width % window
    nh, nw = (height + pad_h) // window, (width + pad_w) // window

    def partition(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
        x = x.view(b, nh, window, nw, window, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b * nh * nw, heads, window * window, c)

    bias = None
    if rpb is not None:
        pos = torch.arange(window, device=q.device)
        rel = pos[None, :] - pos[:, None] + window - 1  # [query, key]
        idx_y = rel.repeat_interleave(window, 0).repeat_interleave(window, 1)
        idx_x = rel.repeat(window, window)
        bias = rpb[:, idx_y, idx_x].to(q.dtype)  # [h, w*w, w*w]
    out = F.scaled_dot_product_attention(partition(q), partition(k), partition(v), attn_mask=bias)
    out = out.view(b, nh, nw, heads, window, window, c).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, nh * window, nw * window, heads, c)[:, :height, :width]


def _dense(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    b, height, width, heads, c = q.shape
    q, k, v = (x.reshape(b, height * width, heads, c).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, height, width, heads, c)


def _na_mask(resolution: int, kernel: int, device: torch.device) -> Tensor:
    """Boolean ``[N, N]`` mask of the NA neighbourhoods (query rows)."""
    from localattn.ops.na.backends.reference import neighbour_table
    from localattn.ops.na.indexing import AxisSpec
    index, valid, _ = neighbour_table((AxisSpec(resolution, kernel),) * 2)
    mask = torch.zeros(index.shape[0], index.shape[0], dtype=torch.bool)
    mask.scatter_(1, index, valid)
    return mask.to(device)


def build_case(method: str, resolution: int, kernel: int, batch: int, heads: int, head_dim: int, rpb: bool,
               dtype: torch.dtype, device: torch.device) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """The op of ``method`` and its inputs (q, k, v and, with RPB, the bias table)."""
    from localattn.ops.na import na2d
    shape = (batch, resolution, resolution, heads, head_dim)
    qkv = [torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(3)]
    table = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device=device) * 0.02
    table.requires_grad_(True)
    with_rpb = qkv + [table] if rpb else qkv
    backends = {'na-tiled': 'native', 'na-tiled-torch': 'tiles', 'na-gather': 'reference', 'na-flex': 'flex'}
    if method in backends:
        return (lambda q, k, v, r=None: na2d(q, k, v, kernel, rpb=r, backend=backends[method])), with_rpb
    if method == 'natten':
        return (lambda q, k, v: na2d(q, k, v, kernel, backend='natten')), qkv
    if method == 'window':
        return (lambda q, k, v, r=None: _window_attention(q, k, v, kernel, r)), with_rpb
    if method == 'sdpa-masked':
        mask = _na_mask(resolution, kernel, device)
        return (lambda q, k, v: _dense(q, k, v, mask)), qkv
    if method == 'sdpa-full':
        return (lambda q, k, v: _dense(q, k, v, None)), qkv
    raise ValueError(f'unknown method {method!r}, expected one of {METHODS}')


def run_case(method: str, resolution: int, kernel: int, mode: str, batch: int, heads: int, head_dim: int,
             rpb: bool, dtype: str, device: str, threads: int, repeats: int, max_seconds: float) -> dict:
    """One measurement (meant to run in a fresh interpreter via ``run_isolated``)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def build():
        return build_case(method, resolution, kernel, batch, heads, head_dim, rpb, DTYPES[dtype],
                          torch.device(device))

    return measure_case(build, backward=mode == 'train', device=device, repeats=repeats, max_seconds=max_seconds)


def estimate_bytes(method: str, resolution: int, kernel: int, batch: int, heads: int, head_dim: int,
                   mode: str) -> float:
    """Rough upper bound of the peak memory of a case (fp32), used to skip hopeless cases."""
    n, bh = resolution ** 2, batch * heads
    factor = 3 if mode == 'train' else 1.5
    maps = 12 * bh * n * head_dim * 4
    if method in ('sdpa-masked', 'sdpa-full'):
        return factor * bh * n * n * 4 + n * n + maps
    if method == 'na-gather':
        return factor * 2 * bh * n * kernel ** 2 * head_dim * 4 + maps
    if method == 'na-tiled-torch':
        return factor * 3 * bh * n * (8 + kernel - 1) ** 2 / 64 * (4 + head_dim * 4) + maps
    return 2 * maps


def available(method: str, device: torch.device) -> str | None:
    """``None`` when ``method`` can run on ``device``, else the reason it cannot."""
    if method == 'na-flex' and device.type != 'cuda':
        return 'FlexAttention is only benchmarked on CUDA (CPU runs it eagerly, dense, forward only)'
    if method == 'natten' and importlib.util.find_spec('natten') is None:
        return 'natten is not installed'
    return None


def run_na_suite(args: argparse.Namespace) -> list[dict]:
    """Run every (method, resolution, kernel, mode) case; returns the result rows."""
    device = torch.device(args.device)
    rows = []
    for resolution in args.resolutions:
        for kernel in args.kernels:
            if kernel > resolution:
                continue
            for method in args.methods:
                for mode in ('forward', 'train'):
                    row = dict(method=method, resolution=resolution, kernel=kernel, mode=mode, batch=args.batch,
                               heads=args.heads, head_dim=args.head_dim, rpb=not args.no_rpb, dtype=args.dtype,
                               device=args.device, threads=args.threads)
                    reason = available(method, device)
                    need = estimate_bytes(method, resolution, kernel, args.batch, args.heads, args.head_dim, mode)
                    if reason is None and need > args.mem_budget_gb * 2 ** 30:
                        reason = f'estimated {need / 2 ** 30:.1f} GB > budget {args.mem_budget_gb} GB'
                    if reason is not None:
                        row.update(status='skipped', note=reason)
                    elif method == 'sdpa-full' and kernel != args.kernels[0]:
                        first = next(r for r in rows if r['method'] == method and r['resolution'] == resolution
                                     and r['mode'] == mode)
                        row.update({k: first.get(k) for k in METRICS}, status=first.get('status'),
                                   peak_mem_mb=first.get('peak_mem_mb'), note='kernel-independent: copied')
                    else:
                        kwargs = {k: row[k] for k in ('method', 'resolution', 'kernel', 'mode', 'batch', 'heads',
                                                      'head_dim', 'rpb', 'dtype', 'device', 'threads')}
                        row.update(run_isolated(osp.abspath(__file__), 'run_case',
                                                dict(kwargs, repeats=args.repeats, max_seconds=args.max_seconds),
                                                args.timeout))
                    rows.append(row)
                    print(format_case(row), flush=True)
    return rows


def summary(rows: list[dict], metric: str, kernel: int = 7) -> str:
    """Markdown acceptance ratios of ``na-tiled`` (fwd+bwd ``metric``) and its scaling with the pixel count."""
    lines = [f'Metric: {METRICS[metric]}.']
    for resolution in (56, 112):
        for mode, label in (('train', 'fwd+bwd'), ('forward', 'forward')):
            for other in ('sdpa-masked', 'na-gather', 'window', 'na-tiled-torch'):
                ours = lookup(rows, 'na-tiled', resolution, kernel, mode, metric)
                theirs = lookup(rows, other, resolution, kernel, mode, metric)
                if ours and theirs:
                    lines.append(f'- {resolution}x{resolution}, k={kernel}, {label}: {other} / na-tiled = '
                                 f'{theirs:.1f} / {ours:.1f} ms = **{theirs / ours:.2f}x**')
    resolutions = sorted({r['resolution'] for r in rows})
    for key, label in ((metric, 'time'), ('peak_mem_mb', 'peak memory')):
        values = [(res, lookup(rows, 'na-tiled', res, kernel, 'train', key)) for res in resolutions]
        values = [(res, v) for res, v in values if v]
        if len(values) >= 2:
            steps = ', '.join(f'{b[0]}px/{a[0]}px: {b[1] / a[1]:.2f}x' for a, b in zip(values, values[1:]))
            lines.append(f'- na-tiled fwd+bwd {label} growth per 4x pixels (k={kernel}): {steps}')
    return '\n'.join(lines)


def _typed(row: dict) -> dict:
    """A CSV row with numbers parsed back (empty cells -> None)."""
    out = dict(row)
    for key in ('resolution', 'kernel'):
        out[key] = int(row[key])
    for key in ('time_ms', 'time_min_ms', 'cpu_ms', 'cpu_min_ms', 'peak_mem_mb'):
        out[key] = float(row[key]) if row.get(key) else None
    return out


def plot(rows: list[dict], out_dir: str, metric: str, kernel: int = 7, resolution: int = 56) -> None:
    """Write ``na_time.png``, ``na_memory.png`` and ``na_kernels.png`` (log scales)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    methods = [m for m in METHODS if any(r['method'] == m and r.get('status') == 'ok' for r in rows)]

    def series(method: str, key: str, mode: str, by: str) -> tuple[list, list]:
        pts = [(r[by], r[key]) for r in rows if r['method'] == method and r['mode'] == mode
               and r.get('status') == 'ok' and (r['kernel'] == kernel if by == 'resolution'
                                                else r['resolution'] == resolution)]
        return [p[0] for p in sorted(pts)], [p[1] for p in sorted(pts)]

    figures = (('na_time.png', metric, METRICS[metric], ('forward', 'train'), 'resolution'),
               ('na_memory.png', 'peak_mem_mb', 'peak memory growth (MB)', ('forward', 'train'), 'resolution'),
               ('na_kernels.png', metric, METRICS[metric], ('forward', 'train'), 'kernel'))
    for name, key, ylabel, modes, by in figures:
        fig, axes = plt.subplots(1, len(modes), figsize=(9, 3.6), dpi=80)
        for ax, mode in zip(axes, modes):
            for method in methods:
                xs, ys = series(method, key, mode, by)
                if xs:
                    ax.plot(xs, ys, marker='o', markersize=3, label=method)
            ticks = sorted({r[by] for r in rows})
            ax.set_xscale('log' if by == 'resolution' else 'linear')
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_yscale('log')
            ax.set_xlabel('resolution (px per side)' if by == 'resolution' else 'kernel size')
            ax.set_ylabel(ylabel)
            what = f'k={kernel}' if by == 'resolution' else f'{resolution}x{resolution}'
            ax.set_title(f"{'fwd+bwd' if mode == 'train' else 'forward'}, {what}", fontsize=9)
            ax.grid(True, which='both', alpha=0.3)
        if axes[-1].get_lines():
            axes[-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(osp.join(out_dir, name))
        plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suite', choices=('na', 'qna', 'all'), default='na')
    parser.add_argument('--resolutions', type=int, nargs='+', default=[28, 56, 112, 224])
    parser.add_argument('--kernels', type=int, nargs='+', default=[3, 5, 7, 9, 11, 13])
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS))
    add_shape_args(parser)
    parser.add_argument('--no-rpb', action='store_true', help='benchmark without relative positional bias')
    add_run_args(parser)
    parser.add_argument('--from-csv', help='re-plot and summarise an existing na_results.csv instead of running')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.suite in ('na', 'all') and args.from_csv:
        with open(args.from_csv, encoding='utf-8') as f:
            rows = [_typed(r) for r in csv.DictReader(f)]
    elif args.suite in ('na', 'all'):
        rows = run_na_suite(args)
        with open(osp.join(args.out_dir, 'na_results.csv'), 'w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)
    if args.suite in ('na', 'all'):
        plot(rows, args.out_dir, args.metric)
        text = summary(rows, args.metric)
        with open(osp.join(args.out_dir, 'na_summary.md'), 'w', encoding='utf-8') as f:
            f.write(text + '\n')
        print(text)
    if args.suite in ('qna', 'all'):
        try:
            from benchmark_qna_suite import run_qna_suite
        except ImportError as err:
            sys.exit(f'--suite {args.suite}: cannot import run_qna_suite from '
                     f'tools/analysis_tools/benchmark_qna_suite.py ({err})')
        run_qna_suite(args)


if __name__ == '__main__':
    main()
