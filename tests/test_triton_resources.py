"""tools/analysis_tools/triton_resources.py: the triton kernels compiled for sm90 on CPU, and what they use.

No GPU is needed: Triton compiles for a named target and the ``ptxas`` it ships reports registers and
spills. The default launch settings (``TUNING``) must not spill at head dims 32 (every model of the zoo)
and 64.
"""
import csv
import os

import pytest

pytest.importorskip('triton')


@pytest.fixture(scope='module')
def tool(load_tool):
    module = load_tool('analysis_tools/triton_resources.py')
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(90)
    except Exception as e:  # noqa: BLE001 - a triton build without its NVIDIA backend
        pytest.skip(f'no ptxas in this triton: {e}')
    if os.environ.get('TRITON_INTERPRET') == '1':
        pytest.skip('the interpreter is on in this process: nothing compiles')
    return module


def test_default_tuning_does_not_spill(tool, tmp_path, capsys):
    from localattn.ops.na.backends import triton as tri
    assert tool.main(['--defaults', '--dims', '32', '64', '--out', str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / 'triton_resources.csv')))
    assert sorted({r['kernel'] for r in rows}) == sorted(tool.KERNELS) and {r['dim'] for r in rows} == {'32', '64'}
    for r in rows:
        assert r['tuning'] == tool.tuning_label(tri.tuning_for(int(r['dim']))) + ' (default)', r
        assert 24 <= int(r['registers']) <= 255, r
        assert r['spill_stores'] == r['spill_loads'] == '0', r
        assert int(r['shared_bytes']) > 0 and int(r['warps_per_sm']) >= int(r['warps']), r
        # one loop of a few hundred instructions per thread; every step computes tile x block pairs
        assert 100 <= int(r['loop_instructions']) <= 2000 and int(r['pairs_per_step']) >= 512, r
    md = (tmp_path / 'triton_resources.md').read_text()
    assert md in capsys.readouterr().out
    assert 'Tunings without spills in any kernel and head dim: ' in md and 'none.' not in md


def test_3d_variant_does_not_spill_and_costs_about_the_same(tool):
    """3-D calls compile the kernels with a loop over depths (``DEPTH``): no spills at head dim 32, and
    the query-key loop stays within 5% of the 2-D variant's instructions per step."""
    from localattn.ops.na.backends import triton as tri
    default = [dict(tri.tuning_for(32))]
    flat, deep = (tool.measure(default, [32], 'bf16', 7, 90, depth=d) for d in (False, True))
    assert [r['ndim'] for r in deep] == [3] * 3 and [r['ndim'] for r in flat] == [2] * 3
    for a, b in zip(flat, deep):
        assert b['spill_stores'] == b['spill_loads'] == 0, b
        assert a['loop_instructions'] <= 1.05 * b['loop_instructions'] and b['loop_instructions'] <= 1.05 * a[
            'loop_instructions'], (a, b)
    assert '(3-D)' in tool.markdown(deep, 'cmd', 90)


def test_four_warps_cost_fewer_instructions_per_pair_than_eight(tool):
    """What the head-dim-32 default rests on: the same blocks with 4 warps issue fewer instructions per
    computed pair than with 8 (the per-thread index work is shared by more elements)."""
    rows = tool.measure([tool.parse_tuning('32:4:2'), tool.parse_tuning('32:8:2')], [32], 'bf16', 7, 90)
    cost = {(r['warps'], r['kernel']): r['instructions_per_pair'] for r in rows}
    assert all(cost[(4, name)] < cost[(8, name)] for name in tool.KERNELS), cost


def test_a_register_cap_shows_as_spills(tool):
    """A cap far below what the kernel needs must come back as spill bytes: the check can fail."""
    rows = tool.measure([tool.parse_tuning('32:8:2:64')], [64], 'bf16', 7, 90)
    assert all(int(r['registers']) <= 64 for r in rows)
    assert any(r['spill_stores'] > 0 for r in rows)
    assert '**' in tool.markdown(rows, 'cmd', 90) and 'and head dim: none.' in tool.markdown(rows, 'cmd', 90)


def test_occupancy_and_argument_checks(tool):
    assert tool.warps_per_sm(128, 8, 20_000) == 16  # 2 blocks of 8 warps fit 65536 registers
    assert tool.warps_per_sm(130, 8, 20_000) == 8  # 130 -> 136 per thread after rounding: 1 block
    assert tool.warps_per_sm(64, 4, 100_000) == 8  # shared memory bounds it: 2 blocks
    assert tool.parse_tuning('64:4:3') == dict(tile=(8, 8), step_keys=64, warps=4, stages=3, maxnreg=None)
    assert tool.parse_tuning('32:1:2@2x8') == dict(tile=(2, 8), step_keys=32, warps=1, stages=2, maxnreg=None)
    for text in ('32:8:2:128', '32:2:2@4x8', '32:2:2:96@4x8', '32:4:2'):
        assert tool.tuning_label(tool.parse_tuning(text)) == text
    assert tool.tuning_label(tool.parse_tuning('32:4:2@8x8')) == '32:4:2'  # 8x8: the default tile
    for bad in ('32:8', '32:6:2', 'a:b:c', '32:8:2:300', '32:4:2@3x8', '32:4:2@2x4', '32:4:2@8', '32:4:2@axb'):
        with pytest.raises(Exception, match='tuning'):
            tool.parse_tuning(bad)
    for text in tool.CANDIDATES:
        tool.parse_tuning(text)


def test_smaller_tiles_cost_fewer_instructions_per_needed_pair(tool):
    """What the tile candidates of the tuning grid rest on (head dim 32, k = 7): 4x8 tiles on 2 warps and
    2x8 on 1 compile without spills and spend fewer loop instructions per pair NA needs than the 8x8
    default on 4 warps, in every kernel (fewer pairs computed, about the same cost per computed pair)."""
    rows = tool.measure([tool.parse_tuning(t) for t in ('32:4:2', '32:2:2@4x8', '32:1:2@2x8')], [32], 'bf16', 7,
                        90)
    cost = {(r['tile'], r['kernel']): r['instructions_per_needed_pair'] for r in rows}
    waste = {r['tile']: r['computed_per_needed'] for r in rows}
    assert waste == {'8x8': 4.38, '4x8': 3.17, '2x8': 2.61}
    assert all(r['spill_stores'] == r['spill_loads'] == 0 for r in rows)
    for name in tool.KERNELS:
        assert cost[('2x8', name)] < cost[('4x8', name)] < cost[('8x8', name)], (name, cost)
