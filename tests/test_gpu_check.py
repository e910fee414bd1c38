"""``tools/analysis_tools/gpu_check.py --device cpu --quick``: every section runs on CPU and reports.

The triton kernels run in Triton's interpreter there (the tool sets ``TRITON_INTERPRET=1`` before
anything imports triton, hence a subprocess); flex has no CPU backward, so its timed rows are
reported as skipped, never as passed.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('triton')

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'analysis_tools' / 'gpu_check.py'


@pytest.mark.slow
def test_quick_cpu_run_writes_a_complete_report(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / 'projects'), os.environ.get('PYTHONPATH', '')]))
    env.pop('TRITON_INTERPRET', None)
    proc = subprocess.run([sys.executable, str(TOOL), '--device', 'cpu', '--quick', '--out', str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    rows = list(csv.DictReader(open(tmp_path / 'gpu_check.csv'))) if (tmp_path / 'gpu_check.csv').exists() else []
    failed = [r for r in rows if r['status'] == 'FAIL']
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:] + proc.stderr[-3000:])
    by_section = {}
    for r in rows:
        by_section.setdefault(r['section'], []).append(r)
    # triton against the reference: outputs and all four gradients, fp32 and bf16, 1-D to 3-D
    corr = by_section['correctness']
    assert len(corr) == 5 and all(r['status'] == 'PASS' and 'drpb' in r['note'] for r in corr)
    assert any(r['case'].startswith('3-D') for r in corr) and any(r['case'].startswith('1-D') for r in corr)
    assert all(float(r['value']) < 1e-5 for r in corr if 'float32' in r['metric'])
    # launch settings of the triton kernels: each candidate timed and checked against the current one
    tuning = by_section['triton_tuning']
    labels = {r['backend'] for r in tuning}
    assert labels == {'triton 32:4:2', 'triton 32:1:2@2x8'} and all(r['status'] == '' for r in tuning)
    assert sum(r['metric'] == 'ms' for r in tuning) == 2
    assert all(float(r['note'].rsplit(': ', 1)[1]) < 1e-5 for r in tuning if r['metric'] == 'fwd+bwd ms')
    # bf16-autocast training steps of NAT, DiNAT (triton) and QnA-ViT
    steps = by_section['train_steps']
    assert {r['case'].split()[0] for r in steps} == {'NAT-Tiny', 'DiNAT-Tiny', 'QnA-ViT-Tiny'}
    assert all(r['status'] == 'PASS' for r in steps)
    # timings exist for triton and both baselines; images/s for the backbones
    speed = {r['backend']: r for r in by_section['na_speed'] if r['metric'] == 'fwd+bwd ms'}
    assert {'triton', 'dense SDPA (no bias)', 'window attention 7x7 (SDPA + bias)'} <= set(speed)
    assert all(float(speed[b]['value']) > 0 for b in ('triton', 'dense SDPA (no bias)'))
    assert any(r['metric'] == 'images/s' and float(r['value']) > 0 for r in by_section['backbone_speed'])
    # flex: exact forward on CPU, backward reported as skipped
    assert all(r['status'] == 'PASS' for r in by_section['flex_correctness'])
    assert by_section['ratios']
    report = (tmp_path / 'gpu_check.md').read_text()
    assert '## correctness' in report and '## summary' in report and '0 FAIL rows' in report
    assert 'fastest: ' in report
    assert '| triton TUNING at start | <=32: 32:4:2, <=64: 32:4:2, <=128: 32:8:2 |' in report
    assert '| triton TUNING at the end | <=32: ' in report
    assert (tmp_path / 'gpu_check.json').exists()


def test_na_kernel_time_without_cuda_events_is_none(load_tool):
    """The profiler share is an extra of GPU runs: without CUDA kernels it reports nothing (no error)."""
    import torch
    module = load_tool('analysis_tools/gpu_check.py')
    x = torch.randn(8, 8, requires_grad=True)
    assert module.na_kernel_time(torch, lambda: (x @ x).sum().backward()) is None


def test_tuning_keeps_the_fastest_complete_candidate_when_its_time_runs_out(load_tool, tmp_path, monkeypatch):
    """The tuning section on a fake clock: candidates cost simulated time; when its share of the budget
    is spent, the candidate being timed and those after it are left out (said in a note), the fastest
    of the complete ones is kept for the rest of the run, and no partial sum can win."""
    import types

    import torch

    from localattn.ops.na.backends import triton as tri
    module = load_tool('analysis_tools/gpu_check.py')
    resources = module._resources()
    monkeypatch.setattr(tri, 'TUNING', {b: dict(c) for b, c in tri.TUNING.items()})
    entry = tri.tuning_for(32)
    monkeypatch.setattr(module, 'TUNING_SHAPES', [(f's{i}', 1, 9, 9, 1, 2) for i in range(4)])
    start = resources.tuning_label(entry)
    # simulated ms per call by candidate; the current setting first, then the grid in order
    cost = {start: 2.0, '32:2:2@4x8': 1.5, '32:1:2@2x8': 1.0}
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(module, 'time', types.SimpleNamespace(perf_counter=lambda: clock.now))

    def timer(fn, **kwargs):
        ms = cost.get(resources.tuning_label(entry), 0.1)  # later candidates would be fastest: never reached
        clock.now += 10.0  # every timed shape costs 10 s of budget
        return ms / 1e3

    na = types.SimpleNamespace(na2d=lambda q, k, v, ks, rpb=None, backend=None: (q * k + v) * rpb.sum())
    rep = module.Report(tmp_path, {})
    # 4 shapes x 10 s per candidate; a third of 300 s: 100 s -> two complete candidates, the third cut
    module.section_triton_tuning(rep, torch, na, 'cpu', False, 300.0, timer)
    totals = {r['backend']: r['value'] for r in rep.rows if r['metric'] == 'ms'}
    assert list(totals) == [f'triton {start}', 'triton 32:2:2@4x8']
    assert resources.tuning_label(entry) == '32:2:2@4x8'  # the fastest complete one, not 32:1:2@2x8's part
    notes = [text for _, text in rep.notes]
    assert any('budget reached while timing 32:1:2@2x8' in n and '6 candidates after it' in n for n in notes), notes
    assert any(n.startswith('fastest: 32:2:2@4x8') for n in notes), notes
