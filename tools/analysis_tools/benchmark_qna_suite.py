"""QnA suite of the attention benchmark: time and peak memory versus window size.

    python tools/analysis_tools/benchmark_attention.py --suite qna --threads 1 --metric cpu_min_ms --repeats 3
    python tools/analysis_tools/benchmark_qna_suite.py --repeats 3 --qna-kernels 3 7 13  # standalone

Shapes (NAT-mini stage 1 / QnA-ViT stage 1 like): batch ``--batch`` (2), ``--heads`` (2) heads of
``--head-dim`` (32), i.e. C = 64 channels, ``L = 2`` learned queries, square maps of 56 and 112 pixels
(``--qna-resolutions``), odd windows 3..15 (``--qna-kernels``), stride 1, fp32 unless ``--dtype``.
The shared tool's ``--resolutions``/``--kernels``/``--methods`` belong to its NA suite; this suite
has its own grid because its acceptance ratios are defined on it.

Methods (``op`` = the attention core on heads-last maps, ``layer`` = with its projections):
  qna         ``localattn.ops.qna2d`` (logits ``[B, H, W, L, h]``, value, RPB, attention-scale weights).
  qna-layer   ``localattn.layers.QnA2d(C, C, h, k)``: folded-query logits, value, QnA, output projection.
  sasa        SASA-style local self-attention: ``F.unfold`` of K and V over the ``k x k`` window (zero
              padded), one query per pixel, RPB per window offset, out-of-image keys masked before
              the softmax. Memory about ``2 * k * k * C * H * W`` for the unfolded K and V alone.
  sasa-layer  the same with a bias-free qkv projection (C -> 3C) and an output projection.
  na-tiled    ``localattn.ops.na2d(backend='tiled')`` with its RPB (neighbourhood attention, same k).

Every case runs in a fresh interpreter (``bench_utils.run_isolated``) with ``--threads`` intra-op
threads and records wall and CPU time (median and best of ``--repeats``, fewer past ``--max-seconds``);
``--metric`` picks the time shown in the summary and plots (on a shared machine ``--threads 1
--metric cpu_min_ms`` is the stable choice). CPU peak memory is the growth of the process' peak resident
set during the first (warm-up) run, so it includes one-off allocations (oneDNN kernels, thread pools),
the same for every method. Cases whose estimated memory exceeds ``--mem-budget-gb`` are recorded as
skipped. Writes ``qna_results.csv``, ``qna_summary.md`` (tables and acceptance ratios) and
``qna_time.png`` / ``qna_memory.png`` to ``--out-dir``.
"""
from __future__ import annotations

import argparse
import csv
import os
import os.path as osp
import sys
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from bench_utils import DTYPES, METRICS, add_run_args, add_shape_args, format_case, lookup, measure_case, run_isolated  # noqa: E402

QNA_METHODS = ('qna', 'qna-layer', 'sasa', 'sasa-layer', 'na-tiled')
QNA_RESOLUTIONS = (56, 112)
QNA_KERNELS = (3, 5, 7, 9, 11, 13, 15)
NUM_QUERIES = 2
MODES = ('forward', 'train')
FIELDS = ('method', 'resolution', 'kernel', 'mode', 'status', 'time_ms', 'time_min_ms', 'cpu_ms', 'cpu_min_ms',
          'peak_mem_mb', 'repeats', 'batch', 'heads', 'head_dim', 'num_queries', 'dtype', 'device', 'threads',
          'note')


def sasa2d(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor, kernel_size: int) -> Tensor:
    """Unfold-based local self-attention over zero-padded ``k x k`` windows (out-of-image keys masked).

    Args:
        query, key, value: ``[B, H, W, heads, head_dim]``.
        rpb: ``[heads, k * k]`` bias per window offset (row-major ``(dy, dx)``).

    Returns:
        ``[B, H, W, heads, head_dim]``.
    """
    batch, height, width, heads, head_dim = query.shape
    area, pixels = kernel_size * kernel_size, height * width

    def unfold(x: Tensor) -> Tensor:  # [B, H, W, h, d] -> [B, h, d, k*k, H*W]
        maps = x.permute(0, 3, 4, 1, 2).reshape(batch, heads * head_dim, height, width)
        cols = F.unfold(maps, kernel_size, padding=(kernel_size - 1) // 2)
        return cols.view(batch, heads, head_dim, area, pixels)

    inside = F.unfold(query.new_ones(1, 1, height, width), kernel_size, padding=(kernel_size - 1) // 2) > 0
    q = query.permute(0, 3, 4, 1, 2).reshape(batch, heads, head_dim, pixels) * head_dim ** -0.5
    logits = torch.einsum('bhdn,bhdkn->bhkn', q, unfold(key)) + rpb.to(q.dtype)[None, :, :, None]
    attn = logits.masked_fill(~inside.view(1, 1, area, pixels), float('-inf')).softmax(dim=2)
    out = torch.einsum('bhkn,bhdkn->bhdn', attn, unfold(value))
    return out.view(batch, heads, head_dim, height, width).permute(0, 3, 4, 1, 2)


class SASA2d(nn.Module):
    """Layer-level SASA baseline on channels-last ``[B, H, W, C]``: qkv projection, :func:`sasa2d`, proj."""

    def __init__(self, channels: int, num_heads: int, kernel_size: int) -> None:
        super().__init__()
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.rpb = nn.Parameter(torch.zeros(num_heads, kernel_size * kernel_size))
        self.proj = nn.Linear(channels, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).view(batch, height, width, 3, self.num_heads, channels // self.num_heads)
        out = sasa2d(qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :], self.rpb, self.kernel_size)
        return self.proj(out.reshape(batch, height, width, channels))


def build_case(method: str, resolution: int, kernel: int, batch: int, heads: int, head_dim: int,
               dtype: torch.dtype, device: torch.device) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """The callable of ``method`` and its inputs (every input and parameter gets gradients)."""
    from localattn.layers import QnA2d
    from localattn.ops import na2d, qna2d

    def randn(*shape: int, std: float = 1.0) -> Tensor:
        return (torch.randn(shape, device=device) * std).to(dtype).requires_grad_()

    maps = (batch, resolution, resolution, heads, head_dim)
    channels = heads * head_dim
    if method == 'qna':
        table = (NUM_QUERIES, heads, kernel, kernel)
        inputs = [randn(batch, resolution, resolution, NUM_QUERIES, heads), randn(*maps),
                  randn(*table, std=0.02), randn(*table, std=0.02)]
        return (lambda s, v, b, w: qna2d(s, v, b, w, kernel_size=kernel)), inputs
    if method in ('qna-layer', 'sasa-layer'):
        layer = (QnA2d(channels, channels, heads, kernel_size=kernel, num_queries=NUM_QUERIES)
                 if method == 'qna-layer' else SASA2d(channels, heads, kernel))
        layer = layer.to(device=device, dtype=dtype)
        return layer, [randn(batch, resolution, resolution, channels)]
    if method == 'sasa':
        return (lambda q, k, v, b: sasa2d(q, k, v, b, kernel)), [randn(*maps) for _ in range(3)] + [
            randn(heads, kernel * kernel, std=0.02)]
    if method == 'na-tiled':
        inputs = [randn(*maps) for _ in range(3)] + [randn(heads, 2 * kernel - 1, 2 * kernel - 1, std=0.02)]
        return (lambda q, k, v, b: na2d(q, k, v, kernel, rpb=b, backend='native')), inputs
    raise ValueError(f'unknown method {method!r}, expected one of {QNA_METHODS}')


def run_case(method: str, resolution: int, kernel: int, mode: str, batch: int, heads: int, head_dim: int,
             dtype: str, device: str, threads: int, repeats: int, max_seconds: float) -> dict:
    """One measurement (meant to run in a fresh interpreter via ``run_isolated``)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def build():
        return build_case(method, resolution, kernel, batch, heads, head_dim, DTYPES[dtype], torch.device(device))

    return measure_case(build, backward=mode == 'train', device=device, repeats=repeats,
                        max_seconds=max_seconds)


def estimate_bytes(method: str, resolution: int, kernel: int, batch: int, heads: int, head_dim: int,
                   mode: str) -> float:
    """Rough upper bound of the peak memory of a case (fp32), used to skip hopeless cases."""
    maps = batch * resolution ** 2 * heads * head_dim * 4
    if method.startswith('sasa'):
        return (4.5 if mode == 'train' else 3.0) * kernel ** 2 * maps + 12 * maps
    return 12 * maps


def run_qna_suite(args: argparse.Namespace) -> list[dict]:
    """Run every (method, resolution, kernel, mode) case, write CSV, summary and plots; return the rows."""
    resolutions = getattr(args, 'qna_resolutions', None) or QNA_RESOLUTIONS
    kernels = getattr(args, 'qna_kernels', None) or QNA_KERNELS
    methods = getattr(args, 'qna_methods', None) or QNA_METHODS
    rows = []
    for resolution in resolutions:
        for kernel in kernels:
            for method in methods:
                for mode in MODES:
                    rows.append(_run_row(args, method, resolution, kernel, mode))
                    print(format_case(rows[-1], method_width=11), flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'qna_results.csv'), 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    text = summary(rows, args.metric)
    with open(osp.join(args.out_dir, 'qna_summary.md'), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    plot(rows, args.out_dir, args.metric)
    print(text)
    return rows


def _run_row(args: argparse.Namespace, method: str, resolution: int, kernel: int, mode: str) -> dict:
    row = dict(method=method, resolution=resolution, kernel=kernel, mode=mode, batch=args.batch, heads=args.heads,
               head_dim=args.head_dim, num_queries=NUM_QUERIES, dtype=args.dtype, device=args.device,
               threads=args.threads)
    need = estimate_bytes(method, resolution, kernel, args.batch, args.heads, args.head_dim, mode)
    if need > args.mem_budget_gb * 2 ** 30:
        row.update(status='skipped', note=f'estimated {need / 2 ** 30:.1f} GB > budget {args.mem_budget_gb} GB')
        return row
    kwargs = {k: row[k] for k in ('method', 'resolution', 'kernel', 'mode', 'batch', 'heads', 'head_dim',
                                  'dtype', 'device', 'threads')}
    row.update(run_isolated(osp.abspath(__file__), 'run_case',
                            dict(kwargs, repeats=args.repeats, max_seconds=args.max_seconds), args.timeout))
    return row


def _table(rows: list[dict], key: str, mode: str, resolution: int) -> list[str]:
    """Markdown table of ``key`` for every method (columns) and kernel (rows)."""
    methods = [m for m in QNA_METHODS if any(r['method'] == m for r in rows)]
    kernels = sorted({r['kernel'] for r in rows if r['resolution'] == resolution})
    lines = ['| k | ' + ' | '.join(methods) + ' |', '|---|' + '---:|' * len(methods)]
    for kernel in kernels:
        cells = [lookup(rows, m, resolution, kernel, mode, key) for m in methods]
        lines.append(f'| {kernel} | ' + ' | '.join('-' if c is None else f'{c:.1f}' for c in cells) + ' |')
    return lines


def _ratio_line(label: str, numerator: float | None, denominator: float | None, target: float,
                at_most: bool = False) -> str:
    if not numerator or not denominator:
        return f'- {label}: n/a (a case was skipped or failed)'
    ratio = numerator / denominator
    ok = ratio <= target if at_most else ratio >= target
    bound = f"{'<=' if at_most else '>='} {target:g}"
    return f"- {label}: {numerator:.1f} / {denominator:.1f} = **{ratio:.2f}x** ({bound}: {'PASS' if ok else 'FAIL'})"


def summary(rows: list[dict], metric: str) -> str:
    """Markdown tables (``metric`` time, peak memory) and the acceptance ratios."""
    resolutions = sorted({r['resolution'] for r in rows})
    kernels = sorted({r['kernel'] for r in rows})
    threads = sorted({r['threads'] for r in rows})
    lines = [f'Time: {METRICS[metric]}; intra-op threads: {threads}; memory: peak RSS growth (MB).']
    for resolution in resolutions:
        for mode in MODES:
            what = 'fwd+bwd' if mode == 'train' else 'forward'
            lines += ['', f'### {resolution}x{resolution}, {what}: {METRICS[metric]}', '']
            lines += _table(rows, metric, mode, resolution)
            lines += ['', f'### {resolution}x{resolution}, {what}: peak memory growth (MB)', '']
            lines += _table(rows, 'peak_mem_mb', mode, resolution)
    lines += ['', '### Acceptance ratios', '']
    lo, hi = kernels[0], kernels[-1]
    for resolution in resolutions:
        for mode in MODES:
            what = 'fwd+bwd' if mode == 'train' else 'forward'
            for method in ('qna', 'qna-layer'):
                lines.append(_ratio_line(
                    f'{resolution}px {what} {method} peak memory k={hi} / k={lo}',
                    lookup(rows, method, resolution, hi, mode, 'peak_mem_mb'),
                    lookup(rows, method, resolution, lo, mode, 'peak_mem_mb'), 1.3, at_most=True))
    if 13 in kernels:
        for resolution in resolutions:
            for mode in MODES:
                what = 'fwd+bwd' if mode == 'train' else 'forward'
                for ours, theirs in (('qna', 'sasa'), ('qna-layer', 'sasa-layer')):
                    for key, label, target in ((metric, 'time', 5), ('peak_mem_mb', 'memory', 10)):
                        lines.append(_ratio_line(
                            f'{resolution}px {what} k=13 {label} {theirs} / {ours}',
                            lookup(rows, theirs, resolution, 13, mode, key),
                            lookup(rows, ours, resolution, 13, mode, key), target))
    return '\n'.join(lines).lstrip('\n')


def plot(rows: list[dict], out_dir: str, metric: str) -> None:
    """Write ``qna_time.png`` (``metric``) and ``qna_memory.png``: one panel per (resolution, mode), log y."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    resolutions = sorted({r['resolution'] for r in rows})
    for name, key, ylabel in (('qna_time.png', metric, METRICS[metric]),
                              ('qna_memory.png', 'peak_mem_mb', 'peak memory growth (MB)')):
        fig, axes = plt.subplots(len(resolutions), len(MODES), figsize=(9, 3.2 * len(resolutions)), dpi=80,
                                 squeeze=False)
        for axes_row, resolution in zip(axes, resolutions):
            for ax, mode in zip(axes_row, MODES):
                for method in QNA_METHODS:
                    pts = sorted((r['kernel'], r[key]) for r in rows if r['method'] == method
                                 and r['resolution'] == resolution and r['mode'] == mode and r.get('status') == 'ok')
                    if pts:
                        ax.plot(*zip(*pts), marker='o', markersize=3, label=method)
                ax.set_yscale('log')
                ax.set_xlabel('kernel size')
                ax.set_ylabel(ylabel)
                ax.set_title(f"{resolution}x{resolution}, {'fwd+bwd' if mode == 'train' else 'forward'}",
                             fontsize=9)
                ax.grid(True, which='both', alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(osp.join(out_dir, name))
        plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Standalone options (the shared tool passes the same names, minus the ``--qna-*`` grid)."""
    parser = argparse.ArgumentParser(description='QnA attention benchmark (time and peak memory vs kernel)')
    parser.add_argument('--qna-resolutions', type=int, nargs='+', default=list(QNA_RESOLUTIONS))
    parser.add_argument('--qna-kernels', type=int, nargs='+', default=list(QNA_KERNELS))
    parser.add_argument('--qna-methods', nargs='+', choices=QNA_METHODS, default=list(QNA_METHODS))
    add_shape_args(parser)
    add_run_args(parser)
    return parser.parse_args(argv)


if __name__ == '__main__':
    run_qna_suite(parse_args())
