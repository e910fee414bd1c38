"""tools/analysis_tools/na_tiling_report.py: the table's figures are the backends' computed_pairs."""
import csv

import pytest

from localattn.ops.na.backends import flex
from localattn.ops.na.indexing import AxisSpec


@pytest.fixture(scope='module')
def report(load_tool):
    return load_tool('analysis_tools/na_tiling_report.py')


def test_quick_table(report, tmp_path, capsys):
    rows = report.main(['--quick', '--out', str(tmp_path)])
    printed = capsys.readouterr().out
    with open(tmp_path / 'na_tiling.csv') as f:
        table = list(csv.DictReader(f))
    assert (tmp_path / 'na_tiling.md').read_text() in printed
    assert [(r['map'], r['dilation'], r['kernel']) for r in table] == [
        ('56x56', '1', '7'), ('200x336', '1', '7'), ('200x336', '28', '7')]
    known = {('56x56', '1'): 12.9, ('200x336', '1'): 39.0, ('200x336', '28'): 62.2}
    triton = report.triton_counter()
    for row, r in zip(rows, table):
        h, w = (int(x) for x in r['map'].split('x'))
        d = int(r['dilation'])
        axes = (AxisSpec(h, 7, d), AxisSpec(w, 7, d))
        needed = h * w * 49
        assert int(r['needed']) == needed
        assert int(r['flex_row_pairs']) == flex.computed_pairs(axes, 'row')
        assert int(r['flex_tile_pairs']) == flex.computed_pairs(axes, 'tile')
        assert abs(float(r['flex_row_ratio']) - known[r['map'], r['dilation']]) <= 0.1
        assert float(r['flex_tile_ratio']) == pytest.approx(int(r['flex_tile_pairs']) / needed)
        assert f"{float(r['flex_row_ratio']):.1f}x | {float(r['flex_tile_ratio']):.1f}x" in printed
        if triton is None:
            assert r['triton_pairs'] == report.UNAVAILABLE and r['triton_ratio'] == ''
        elif r['triton_ratio']:
            assert int(r['triton_pairs']) == triton(axes)
        assert row['flex_tile_pairs'] == int(r['flex_tile_pairs'])
    stage1 = {(r['map'], r['dilation']): float(r['flex_tile_ratio']) for r in table}
    assert stage1['200x336', '1'] <= 13.0 and stage1['200x336', '28'] <= 20.7


def test_shapes_option_and_short_axes(report, capsys):
    rows = report.main(['--shapes', '14x14', '7x9:2', '--kernels', '7', '11'])
    capsys.readouterr()
    assert [(r['map'], r['dilation'], r['kernel']) for r in rows] == [
        ('14x14', 1, 7), ('7x9', 2, 7), ('14x14', 1, 11), ('7x9', 2, 11)]
    # 7x9 at k = 7, d = 2 runs as the layer runs it: whole dilation groups (k = 4 and 5), padded
    short = rows[1]
    assert short['note'] and short['run_kernel'] == '4x5'
    axes = (AxisSpec(8, 4, 2), AxisSpec(10, 5, 2))
    assert short['tokens'] == 80 and short['needed'] == 80 * 20
    assert short['flex_tile_pairs'] == flex.computed_pairs(axes)


def test_missing_triton_module(report, monkeypatch, capsys):
    monkeypatch.setattr(report.importlib, 'import_module',
                        lambda name: (_ for _ in ()).throw(ImportError(name)))
    rows = report.main(['--shapes', '14x14', '--kernels', '7'])
    assert rows[0]['triton_pairs'] == report.UNAVAILABLE
    assert report.UNAVAILABLE in capsys.readouterr().out
