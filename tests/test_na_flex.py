"""The FlexAttention backend on tile-major tokens: exactness against the reference, the token
permutation, the block mask, the computed-pair figures and the number of compilations."""
import functools
import math
import warnings

import pytest
import torch

flex_attention_module = pytest.importorskip('torch.nn.attention.flex_attention')

from localattn.ops.na.backends import flex  # noqa: E402
from localattn.ops.na.backends.reference import na_reference, neighbour_table  # noqa: E402
from localattn.ops.na.indexing import AxisSpec  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')  # eager flex warns about being unfused


def axes_of(lengths, kernels, dilations=None, **per_axis):
    n = len(lengths)
    dilations = dilations or (1,) * n
    extra = [{k: v[a] for k, v in per_axis.items()} for a in range(n)]
    return tuple(AxisSpec(length, k, d, **e) for length, k, d, e in zip(lengths, kernels, dilations, extra))


def make(axes, heads=2, dim=8, rpb=True, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    shape = (2,) + tuple(ax.length for ax in axes) + (heads, dim)
    q, k, v = (torch.randn(shape, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3))
    table = None
    if rpb:
        table = torch.randn((heads,) + tuple(2 * ax.kernel - 1 for ax in axes), generator=g, dtype=dtype)
        table.requires_grad_(grad)
    return q, k, v, table


CASES = {
    '1d': axes_of((37,), (5,), (3,)),
    '1d-multi-block': axes_of((150,), (7,)),
    '2d-dilated': axes_of((13, 21), (5, 7), (2, 1)),
    '2d-odd-dilations': axes_of((23, 17), (3, 3), (3, 4)),
    '2d-wide': axes_of((9, 70), (7, 7)),
    '2d-even-kernel': axes_of((11, 12), (4, 6), (2, 1)),
    '3d': axes_of((5, 9, 11), (3, 3, 5), (1, 2, 2)),
    '2d-stride-causal-valid': axes_of((12, 15), (3, 5), stride=(1, 2), causal=(True, False), valid=(12, 11)),
}


@pytest.mark.parametrize('rpb', [True, False], ids=['rpb', 'no-rpb'])
@pytest.mark.parametrize('name', list(CASES))
def test_matches_reference(name, rpb):
    axes = CASES[name]
    q, k, v, table = make(axes, rpb=rpb)
    out = flex.na_flex(q, k, v, axes, table, 0.4)
    torch.testing.assert_close(out, na_reference(q, k, v, axes, table, 0.4), rtol=0, atol=1e-5)


def test_rpb_gradients_match_reference(monkeypatch):
    """Flex refuses backward on CPU; its eager math runs when the guard is lifted (checks the mods)."""
    monkeypatch.setattr(flex_attention_module, '_validate_device', lambda *args: None)
    axes = axes_of((9, 13), (3, 5), (2, 2))
    q, k, v, table = make(axes, dtype=torch.float64, grad=True)
    grad = torch.randn(q.shape, dtype=q.dtype)
    grads = [torch.autograd.grad(fn(q, k, v, axes, table, 0.3), (q, k, v, table), grad)
             for fn in (flex.na_flex, na_reference)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', ['1d', '2d-dilated', '2d-odd-dilations', '3d'])
def test_permutation_round_trips(name):
    axes = CASES[name]
    layout = flex.tile_layout(axes)
    x = torch.randn((2,) + tuple(ax.length for ax in axes) + (3, 4))
    y = flex.to_tile_major(x, layout)
    assert y.shape == (2, 3, layout.tokens, 4)
    torch.testing.assert_close(flex.from_tile_major(y, layout, x.shape), x, rtol=0, atol=0)
    # every map position appears exactly once; everything else is zero padding
    ids = torch.arange(1, 1 + math.prod(x.shape[1:-2]), dtype=torch.float64)
    perm = flex.to_tile_major(ids.view((1,) + x.shape[1:-2] + (1, 1)), layout).flatten()
    assert torch.equal(perm[perm > 0].sort().values, ids)
    assert int((perm == 0).sum()) == layout.tokens - ids.numel()


def _coords(axes, layout):
    """Per permuted token: global coordinates (``-1`` for padding), ``[n_axes, tokens]``."""
    lengths = [ax.length for ax in axes]
    out = []
    for a in range(len(axes)):
        c = torch.arange(lengths[a], dtype=torch.float64) + 1
        c = c.view([1] * a + [-1] + [1] * (len(axes) - a - 1)).expand(lengths)
        out.append(flex.to_tile_major(c.reshape((1,) + tuple(lengths) + (1, 1)), layout).flatten() - 1)
    return torch.stack(out).long()


@pytest.mark.parametrize('name', ['2d-dilated', '2d-odd-dilations', '3d'])
def test_blocks_are_compact_tiles_of_one_dilation_group(name):
    axes = CASES[name]
    layout = flex.tile_layout(axes)
    coords = _coords(axes, layout).view(len(axes), layout.n_blocks_padded, layout.block)
    for b in range(layout.n_blocks_padded):
        c = coords[:, b]
        real = (c >= 0).all(0)
        if not real.any():
            continue
        c = c[:, real]
        for a, ax in enumerate(axes):
            assert len(set((c[a] % ax.dilation).tolist())) == 1, 'a block mixes dilation groups'
            local = c[a] // ax.dilation
            assert int(local.max() - local.min()) < layout.tiles[a], 'a block is not one tile'


@pytest.mark.parametrize('name', list(CASES))
def test_block_mask_is_exact_and_padding_is_never_attended(name):
    axes = CASES[name]
    p = flex.plan(axes, torch.device('cpu'), flex.choose_tiles(axes))
    layout, n = p.layout, p.layout.tokens
    mask_mod = p.block_mask.mask_mod
    qi, ki = torch.arange(n)[:, None].expand(n, n), torch.arange(n)[None, :].expand(n, n)
    dense = mask_mod(torch.zeros(()), torch.zeros(()), qi, ki)
    # the same pairs as the reference neighbour lists, mapped through the permutation
    coords = _coords(axes, layout)
    real = (coords >= 0).all(0)
    flat = torch.zeros(n, dtype=torch.long)
    for a, ax in enumerate(axes):
        flat = flat * ax.length + coords[a].clamp(min=0)
    index, valid, _ = neighbour_table(axes)
    expected = torch.zeros(n, n, dtype=torch.bool)
    pos = torch.full((index.shape[0],), -1, dtype=torch.long)
    pos[flat[real]] = torch.arange(n)[real]
    rows = pos[:, None].expand_as(index)
    expected[rows[valid], pos[index[valid]]] = True
    assert torch.equal(dense, expected)
    assert not dense[~real].any() and not dense[:, ~real].any()
    # visited blocks are exactly the blocks holding a neighbour pair
    b = layout.block
    holds = dense.view(n // b, b, n // b, b).any(-1).any(1)
    count = p.block_mask.kv_num_blocks[0, 0]
    visited = torch.zeros_like(holds)
    for row in range(holds.shape[0]):
        visited[row, p.block_mask.kv_indices[0, 0, row, :count[row]].long()] = True
    assert torch.equal(visited, holds)
    assert flex.computed_pairs(axes) == int(holds.sum()) * b * b


def test_computed_pairs_figures():
    """k = 7 at the stage-1 maps of 224 and 800x1344 inputs: the tile-major order cuts the waste >= 3x."""
    figures = {}
    for shape, d in (((56, 56), 1), ((200, 336), 1), ((200, 336), 28)):
        axes = axes_of(shape, (7, 7), (d, d))
        needed = flex.needed_pairs(axes)
        assert needed == math.prod(shape) * 49
        figures[shape, d] = (flex.computed_pairs(axes, 'row'), flex.computed_pairs(axes), needed)
    assert figures[(56, 56), 1] == (1982464, 1478656, 153664)
    assert figures[(200, 336), 1] == (128270336, 36978688, 3292800)
    assert figures[(200, 336), 28] == (204914688, 12845056, 3292800)
    ratios = {key: (row / needed, tile / needed) for key, (row, tile, needed) in figures.items()}
    assert round(ratios[(56, 56), 1][0], 1) == 12.9
    assert round(ratios[(200, 336), 1][0], 1) == 39.0
    assert round(ratios[(200, 336), 28][0], 1) == 62.2
    assert ratios[(200, 336), 1][1] <= 13.0  # 11.2x
    assert ratios[(200, 336), 28][1] <= 20.7  # 3.9x
    for row, tile in ratios.values():
        assert tile < row


def test_bucket_blocks():
    values = [flex.bucket_blocks(n) for n in range(1, 5000)]
    assert all(v >= n for n, v in zip(range(1, 5000), values))
    assert all(v <= max(8, 1.25 * n) for n, v in zip(range(1, 5000), values))
    assert values == sorted(values)
    assert len(set(values)) <= 8 + 4 * 10  # four sizes per octave


def _count_compiles(monkeypatch, sizes, dynamic):
    """Run na_flex eagerly on ``sizes`` through ``torch.compile(backend=counting)``; return the count."""
    calls = []

    def counting(gm, example_inputs):
        calls.append(len(gm.graph.nodes))
        return gm.forward

    monkeypatch.setattr(flex, 'compile_flex', functools.partial(torch.compile, backend=counting, dynamic=dynamic))
    monkeypatch.setattr(flex, 'COMPILED_DEVICES', frozenset({'cpu'}))
    torch._dynamo.reset()
    blocks = set()
    try:
        for i, (h, w, d) in enumerate(sizes):
            axes = axes_of((h, w), (3, 5), (d, 1))
            q, k, v, table = make(axes, heads=2, dim=8, seed=i)
            out = flex.na_flex(q, k, v, axes, table, 0.3)
            if i % 7 == 0:
                torch.testing.assert_close(out, na_reference(q, k, v, axes, table, 0.3), rtol=0, atol=1e-5)
            blocks.add(flex.tile_layout(axes).n_blocks_padded)
    finally:
        torch._dynamo.reset()
    return len(calls), blocks


def test_twenty_sizes_compile_once(monkeypatch):
    """The production setting (``dynamic=True``, tables captured as tensors): one graph for 20 sizes."""
    sizes = [(10 + i, 13 + 2 * i, 1 + i % 3) for i in range(20)]
    assert len({(h, w) for h, w, _ in sizes}) == 20
    compiles, blocks = _count_compiles(monkeypatch, sizes, dynamic=True)
    assert len(blocks) > 5
    assert compiles == 1


def test_static_compiles_are_bounded_by_buckets(monkeypatch):
    """With ``dynamic=False`` the bucketed block count is the only shape left: one graph per bucket."""
    sizes = [(16 + i, 21 + (i * 7) % 13, 1 + i % 2) for i in range(20)]
    assert len({(h, w, d) for h, w, d in sizes}) == 20
    compiles, blocks = _count_compiles(monkeypatch, sizes, dynamic=False)
    assert compiles == len(blocks) <= 6


def test_inside_torch_compile():
    """Under an outer compilation the plan is traced into the graph (fullgraph)."""
    axes = axes_of((9, 11), (3, 5), (2, 1))
    q, k, v, table = make(axes)
    torch._dynamo.reset()
    try:
        fn = torch.compile(lambda q, k, v, r: flex.na_flex(q, k, v, axes, r, 0.3), backend='eager', fullgraph=True)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = fn(q, k, v, table)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out, na_reference(q, k, v, axes, table, 0.3), rtol=0, atol=1e-5)


def test_tile_choice():
    assert flex.choose_tiles(axes_of((56, 56), (7, 7))) == (8, 8)
    small = axes_of((28, 28), (7, 7))  # 28 rows do not fill 8-row tiles: another shape wins
    costs = {t: flex.computed_pairs(small, tiles=t) for t in flex._factorisations(flex.BLOCK, 2)}
    assert costs[flex.choose_tiles(small)] == min(costs.values()) < costs[8, 8]
    assert math.prod(flex.choose_tiles(axes_of((6, 10, 12), (3, 3, 5)))) == flex.BLOCK
    assert flex.choose_tiles(axes_of((300,), (7,))) == (flex.BLOCK,)
    big = axes_of((56, 56), (7, 7))
    costs = {t: flex.computed_pairs(big, tiles=t) for t in flex._factorisations(flex.BIG_BLOCK, 2)}
    assert costs[flex.choose_tiles(big, flex.BIG_BLOCK)] == min(costs.values())
