"""tools/analysis_tools/benchmark_backbone.py: a tiny end-to-end run and its argument checks."""
from __future__ import annotations

import argparse
import csv
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'analysis_tools' / 'benchmark_backbone.py'
TINY_NAT = "NAT:arch={'embed_dims': 8, 'depths': (1, 1, 1, 1), 'num_heads': (1, 1, 1, 1)}"
BASELINE = 'ResNet:depth=18'


@pytest.fixture(scope='module')
def tool():
    return SourceFileLoader('benchmark_backbone_tool', str(TOOL)).load_module()


def test_sizes_and_arguments(tool):
    assert tool.parse_size('224') == (224, 224)
    assert tool.parse_size('800x1333') == (800, 1333)
    for bad in ('0', '12x', 'axb', '1x2x3'):
        with pytest.raises(argparse.ArgumentTypeError, match='size must be H or HxW'):
            tool.parse_size(bad)
    args = tool.parse_args([])
    assert args.sizes == [(224, 224), (800, 1333)] and args.batch == [8, 1]
    cases = tool.cases(args)
    assert {(c['size'], c['mode']) for c in cases} == {('224x224', 'inference'), ('224x224', 'train'),
                                                       ('800x1333', 'inference')}
    assert {c['model'] for c in cases} == {'nat-tiny', 'dinat-tiny', 'qnavit-tiny', 'swin-t', 'resnet-50'}
    with pytest.raises(SystemExit):
        tool.parse_args(['--sizes', '64', '128', '--batch', '1', '2', '3'])
    with pytest.raises(SystemExit):
        tool.parse_args(['--amp', 'bf16'])  # CPU


def test_end_to_end_run(tool, tmp_path, capsys):
    rows = tool.main([TINY_NAT, '--baseline', BASELINE, '--extra-baselines', '--sizes', '32x48', '--batch', '2',
                      '--repeats', '1', '--threads', '1', '--out-dir', str(tmp_path)])
    assert [(r['model'], r['mode']) for r in rows] == [(TINY_NAT, 'inference'), (BASELINE, 'inference'),
                                                       (TINY_NAT, 'train'), (BASELINE, 'train')]
    assert all(r['status'] == 'ok' for r in rows), rows
    for r in rows:
        assert r['images_per_s'] == pytest.approx(2e3 / r['time_min_ms'])
        assert r['params_m'] > 0 and r['peak_mem_mb'] >= 0
    with open(tmp_path / 'backbone_results.csv', encoding='utf-8') as f:
        assert len(list(csv.DictReader(f))) == 4
    text = (tmp_path / 'backbone_summary.md').read_text()
    ratio = rows[0]['images_per_s'] / rows[1]['images_per_s']
    assert f'{ratio:.2f}x' in text and '| 1.00x |' in text
    assert (tmp_path / 'backbone_throughput.png').stat().st_size > 0
    assert (tmp_path / 'backbone_memory.png').stat().st_size > 0
    # re-summarise from the CSV without running anything
    again = tool.main(['--from-csv', str(tmp_path / 'backbone_results.csv'), '--baseline', BASELINE,
                       '--out-dir', str(tmp_path / 'again')])
    assert [r['images_per_s'] for r in again] == pytest.approx([r['images_per_s'] for r in rows])
