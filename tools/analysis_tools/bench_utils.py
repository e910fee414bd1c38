"""Timing and peak-memory helpers shared by the attention benchmarks.

A benchmark case is a ``build`` callable returning ``(fn, inputs)``: ``fn(*inputs)`` runs the op and
returns one tensor; ``inputs`` are the tensors it reads (those with ``requires_grad`` get gradients).

* :func:`measure_case` times ``fn`` in the current process (wall and CPU time, median and min over up
  to ``repeats`` runs after one warm-up run, forward only under ``no_grad`` or forward + backward
  with a fixed random output gradient) and measures its peak memory during the warm-up run, the
  first thing it runs: on CUDA the growth of ``torch.cuda.max_memory_allocated``; on CPU the growth
  of the process' peak resident set size
  (``VmHWM``, reset through ``/proc/self/clear_refs`` first; without it the lifetime peak
  ``ru_maxrss``, which is only meaningful in a fresh process).
* :func:`add_shape_args` and :func:`add_run_args` add the command-line options the attention
  benchmarks share (``--batch`` .. ``--head-dim``; ``--device`` .. ``--out-dir``, with the
  :data:`DTYPES` and :data:`METRICS` choices).
* :func:`run_isolated` runs ``function(**kwargs)`` from a Python file in a fresh interpreter and returns
  the dict it returns (``{'status': 'error' | 'timeout', 'note': ...}`` on failure). Use it for CPU
  memory numbers: freed memory stays in the allocator, so cases measured in one process disturb
  each other.

Example (``my_bench.py``)::

    def run(size: int) -> dict:
        def build():
            x = torch.randn(size, size, requires_grad=True)
            return (lambda t: t @ t), [x]
        return measure_case(build, backward=True, device='cpu', repeats=5)

    result = run_isolated(__file__, 'run', {'size': 512}, timeout=60)
    # {'status': 'ok', 'time_ms': ..., 'time_min_ms': ..., 'cpu_ms': ..., 'peak_mem_mb': ..., ...}
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from torch import Tensor

RESULT_PREFIX = '@@bench-result@@'


#: ``--metric`` choices: result field -> its description in plots and summaries.
METRICS = {'time_min_ms': 'wall time, best of repeats (ms)', 'time_ms': 'wall time, median (ms)',
           'cpu_min_ms': 'CPU time, best of repeats (ms)', 'cpu_ms': 'CPU time, median (ms)'}
#: ``--dtype`` choices.
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """``--batch``, ``--heads``, ``--head-dim``: the tensor shape of every case."""
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--heads', type=int, default=2)
    parser.add_argument('--head-dim', type=int, default=32)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--repeats``, ``--max-seconds``, ``--metric``, ``--threads``,
    ``--mem-budget-gb``, ``--timeout``, ``--out-dir``: how and where the cases run."""
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=tuple(DTYPES), default='float32')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--max-seconds', type=float, default=60.0, help='time budget of the repeats of one case')
    parser.add_argument('--metric', choices=tuple(METRICS), default='time_min_ms', help='time shown in plots/summary')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch intra-op threads')
    parser.add_argument('--mem-budget-gb', type=float, default=8.0, help='skip cases estimated above this')
    parser.add_argument('--timeout', type=float, default=600.0, help='seconds per case before giving up')
    parser.add_argument('--out-dir', default='work_dirs/benchmarks/attention')


def _rss_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), else ``None``."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS; ``False`` where the kernel does not allow it."""
    try:
        with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure_case(build: Callable[[], tuple[Callable[..., Tensor], list[Tensor]]], backward: bool,
                 device: str | torch.device, repeats: int, max_seconds: float = 60.0) -> dict:
    """Time ``fn(*inputs)`` (plus backward when ``backward``) and measure its peak memory.

    Runs fewer than ``repeats`` timed steps when they would take more than ``max_seconds``.
    Returns ``{'status': 'ok', 'time_ms': median, 'time_min_ms': min, 'cpu_ms': median,
    'cpu_min_ms': min, 'peak_mem_mb': peak growth, 'repeats': timed steps}`` where ``cpu_*`` is the
    process CPU time (all threads; with one thread it ignores time-slicing by other processes).
    """
    device = torch.device(device)
    fn, inputs = build()
    grads: list[Tensor] = []  # the output gradient, drawn in the first step (nothing runs before it)

    def step() -> None:
        if backward:
            out = fn(*inputs)
            if not grads:
                grads.append(torch.randn(out.shape, dtype=out.dtype, device=out.device,
                                         generator=torch.Generator(out.device).manual_seed(0)))
            out.backward(grads[0])
            for x in inputs:
                x.grad = None
        else:
            with torch.no_grad():
                fn(*inputs)

    _sync(device)
    start = time.perf_counter()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        fresh = _reset_peak_rss()
        base = _rss_bytes('VmRSS') or 0
        step()
        high = _rss_bytes('VmHWM') if fresh else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max((high or 0) - base, 0)
    first = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(max(1, min(repeats, int(max_seconds / max(first, 1e-9))))):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return dict(status='ok', time_ms=1e3 * statistics.median(times), time_min_ms=1e3 * min(times),
                cpu_ms=1e3 * statistics.median(cpu), cpu_min_ms=1e3 * min(cpu), peak_mem_mb=peak / 2 ** 20,
                repeats=len(times))


def run_isolated(path: str, function: str, kwargs: dict, timeout: float) -> dict:
    """Run ``function(**kwargs)`` from the Python file ``path`` in a fresh interpreter.

    ``kwargs`` must be JSON-serialisable and the function must return a JSON-serialisable dict.
    """
    code = ('import importlib.util, json, sys\n'
            f'spec = importlib.util.spec_from_file_location("bench_case", {path!r})\n'
            'module = importlib.util.module_from_spec(spec)\n'
            'spec.loader.exec_module(module)\n'
            f'result = getattr(module, {function!r})(**json.loads(sys.argv[1]))\n'
            f'print({RESULT_PREFIX!r} + json.dumps(result))\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(path)),
                                                                    os.environ.get('PYTHONPATH')])))
    try:
        proc = subprocess.run([sys.executable, '-c', code, json.dumps(kwargs)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(status='timeout', note=f'over {timeout:.0f} s')
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f'exit code {proc.returncode}']
    return dict(status='error', note=tail[0][:300])


def format_case(row: dict, method_width: int = 15) -> str:
    """One progress line for an op-benchmark row (``method``, ``resolution``, ``kernel``, ``mode`` and results)."""
    head = f"{row['method']:>{method_width}s} {row['resolution']:>4d}px k{row['kernel']:<3d} {row['mode']:>8s}"
    if row.get('status') != 'ok':
        return f"{head}  {row.get('status')}: {row.get('note', '')}"
    return (f"{head}  {row['time_ms']:10.2f} ms (best {row['time_min_ms']:.2f}, cpu best {row['cpu_min_ms']:.2f})"
            f"  {row['peak_mem_mb']:9.1f} MB")


def lookup(rows: list[dict], method: str, resolution: int, kernel: int, mode: str, key: str) -> float | None:
    """``key`` of the row of (method, resolution, kernel, mode); ``None`` if absent or not ``ok``."""
    for r in rows:
        if (r['method'], r['resolution'], r['kernel'], r['mode']) == (method, resolution, kernel, mode):
            return r.get(key) if r.get('status') == 'ok' else None
    return None
