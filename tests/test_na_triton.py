"""The ``triton`` NA backend, run on CPU by Triton's interpreter, against the brute-force reference.

The kernels are the ones a GPU runs (same source, same tiling); ``TRITON_INTERPRET=1`` executes their
programs one after another with numpy, so this checks the arithmetic and the tiling, not races (the
RPB gradient is race-free by construction: one partial slot per program, summed on the host).

Triton reads ``TRITON_INTERPRET`` when ``triton.language`` is first imported, which other tests of the
session may already have done, so every kernel call runs in one worker subprocess (this file run as
a script) and the tests assert on what it reports.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('triton')
# every test here reads the one interpreter run of the module's worker fixture: keep them on one
# pytest-xdist worker (``--dist loadgroup``) so that run happens once
pytestmark = pytest.mark.xdist_group('triton_interpreter')

from localattn.ops.na.backends import triton as tri  # noqa: E402
from localattn.ops.na.indexing import AxisSpec  # noqa: E402


def random_configs(n: int, seed: int) -> list[dict]:
    """Random 1-D/2-D calls: kernel 3..13 (even too), dilation 1..4, odd non-square maps, 1-4 heads."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ndim = 1 if rng.random() < 0.2 else 2
        ks = tuple(rng.randint(3, 13) if ndim == 1 or rng.random() < 0.3 else rng.choice((3, 4, 5, 7))
                   for _ in range(ndim))
        if ndim == 2 and rng.random() < 0.5:
            ks = (ks[0], ks[0])
        dil = tuple(rng.randint(1, 4) if k <= 5 else rng.randint(1, 2) for k in ks)
        shape = tuple(k * d + rng.randint(0, 6) for k, d in zip(ks, dil))
        valid = None
        if rng.random() < 0.2:
            valid = tuple(max(1, s - rng.randint(0, 3)) for s in shape)
        case = dict(shape=shape, kernel=ks, dilation=dil, heads=rng.randint(1, 4),
                    dim=rng.choice((16, 32, 64)), rpb=rng.random() < 0.85, valid=valid)
        # the interpreter's time grows with the computed pairs: keep each case to a few seconds
        axes = tuple(AxisSpec(s, k, d) for s, k, d in zip(shape, ks, dil))
        if tri.computed_pairs(axes) * case['heads'] <= 100_000:
            out.append(case)
    return out


def run_case(case: dict, dtype: torch.dtype, seed: int = 0) -> list[float]:
    """Max relative error of out, dq, dk, dv (and drpb) against the fp64 reference (worker side)."""
    from localattn.ops.na.backends.reference import na_reference
    torch.manual_seed(seed)
    shape, ks = case['shape'], case['kernel']
    axes = tuple(AxisSpec(s, k, d, valid=None if case['valid'] is None else case['valid'][a])
                 for a, (s, k, d) in enumerate(zip(shape, ks, case['dilation'])))
    q, k, v = (torch.randn(1, *shape, case['heads'], case['dim'], dtype=dtype) for _ in range(3))
    rpb = 0.5 * torch.randn(case['heads'], *(2 * x - 1 for x in ks)) if case['rpb'] else None
    go = torch.randn_like(q)
    scale = case['dim'] ** -0.5
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    leaves += [rpb.clone().requires_grad_()] if case['rpb'] else []
    out = tri.na_triton(*leaves[:3], axes, leaves[3] if case['rpb'] else None, scale)
    got = [out, *torch.autograd.grad(out, leaves, go)]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = na_reference(*ref_leaves[:3], axes, ref_leaves[3] if case['rpb'] else None, scale)
    want = [ref, *torch.autograd.grad(ref, ref_leaves, go.double())]
    assert out.dtype == dtype and out.shape == q.shape
    return [((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(got, want)]


def make_case(shape, kernel, dilation=1, heads=1, dim=16, rpb=True, valid=None) -> dict:
    """A configuration for :func:`run_case`; ``kernel`` / ``dilation``: an int or one per axis."""
    def per_axis(x):
        return tuple(x) if isinstance(x, tuple) else (x,) * len(shape)
    return dict(shape=shape, kernel=per_axis(kernel), dilation=per_axis(dilation), heads=heads, dim=dim, rpb=rpb,
                valid=valid)


FP32_CASES = random_configs(20, seed=1)
HALF_CASES = random_configs(4, seed=2)
# 3-D calls (the interpreter runs every tile program one after another: small maps): odd and non-cubic
# maps, even kernels, dilation on each axis, valid_size, no RPB, head dims 16 / 32 / 64
CASES_3D = [
    make_case((5, 6, 7), (3, 3, 5), (1, 2, 1)),
    make_case((7, 5, 6), (3, 2, 3), (2, 1, 1), dim=32),
    make_case((6, 6, 5), 3, heads=2, valid=(5, 6, 4)),
    make_case((4, 9, 8), (4, 3, 3), rpb=False, dim=32),
    make_case((6, 4, 5), (5, 2, 3), (1, 2, 1), dim=64),
    make_case((3, 11, 10), (2, 5, 5), (1, 2, 2)),
]
# head dims that are not powers of two (loads and stores with lane masks: BD > D)
LANE_CASES = [make_case((9, 11), (3, 5), (2, 1), dim=24, heads=2), make_case((13,), 5, 2, dim=8),
              make_case((4, 5, 6), 3, dim=40), make_case((7, 8), 3, dim=20, rpb=False)]
# the other block sizes gpu_check's tuning section may pick: 2-D cases whose key blocks get several rows
STEP_CASES = [c for c in FP32_CASES if len(c['shape']) == 2 and max(c['kernel']) <= 8][:3]
OTHER_STEPS = (1, 64, 128)


# the smaller tiles the tuning may pick (rows x columns of query and key tiles, with their warps):
# 2-D cases (k <= 8), a 2-D case with k > 8, a dilated one with valid_size, and 3-D
TILES = ((4, 8), (2, 8))
TILE_CASES = STEP_CASES + [make_case((13, 11), (9, 5), (1, 2), dim=32),
                           make_case((11, 14), 3, (2, 3), valid=(9, 13)), CASES_3D[0]]


def run_with_settings(case: dict, **settings) -> list[float]:
    """run_case with the launch settings of the case's head dim replaced by ``settings`` (worker side)."""
    entry = tri.tuning_for(case['dim'])
    saved = dict(entry)
    entry.update(settings)
    try:
        return run_case(case, torch.float32)
    finally:
        entry.clear()
        entry.update(saved)


def run_with_step_keys(case: dict, step_keys: int) -> list[float]:
    """run_case with the launch settings' ``step_keys`` replaced (worker side)."""
    assert (tri.tiling(*case['kernel'], case['dim'], step_keys=step_keys).krh > 1) == (step_keys > 16)  # kw = 16
    return run_with_settings(case, step_keys=step_keys)


def run_with_tile(case: dict, tile: tuple[int, int]) -> list[float]:
    """run_case with query / key tiles of ``tile`` (and as many warps as gpu_check's candidates give it)."""
    assert tri.tiling(*case['kernel'][-2:], case['dim'], tile=tile).tqh == (tile[0] if len(case['kernel']) > 1 else 1)
    return run_with_settings(case, tile=tile, warps=max(1, tile[0] * tile[1] // 16))


def test_configs_cover_the_acceptance_ranges():
    kernels = {k for c in FP32_CASES for k in c['kernel']}
    assert any(k % 2 == 0 for k in kernels) and max(kernels) >= 11 and min(kernels) == 3
    assert any(len(c['kernel']) == 2 and max(c['kernel']) >= 9 for c in FP32_CASES)
    assert max(d for c in FP32_CASES for d in c['dilation']) >= 3
    assert any(len(c['shape']) == 1 for c in FP32_CASES) and any(len(c['shape']) == 2 for c in FP32_CASES)
    assert any(len(c['shape']) == 2 and c['shape'][0] != c['shape'][1] and c['shape'][0] % 2 for c in FP32_CASES)
    assert {c['dim'] for c in FP32_CASES} == {16, 32, 64} and {c['heads'] for c in FP32_CASES} >= {1, 2, 3}


def _case_id(c: dict) -> str:
    return f"{c['shape']}-k{c['kernel']}-d{c['dilation']}-h{c['heads']}-c{c['dim']}"


@pytest.fixture(scope='module')
def worker() -> dict:
    """Run every kernel check in one ``TRITON_INTERPRET=1`` subprocess; ``{check: result}``."""
    env = dict(os.environ, TRITON_INTERPRET='1')
    root = Path(__file__).resolve().parents[1]
    env['PYTHONPATH'] = os.pathsep.join([str(root / 'projects'), env.get('PYTHONPATH', '')])
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('i', range(len(FP32_CASES)), ids=[_case_id(c) for c in FP32_CASES])
def test_fp32_equals_reference(worker, i):
    errs = worker[f'fp32/{i}']
    assert isinstance(errs, list) and max(errs) < 1e-5, errs  # out, dq, dk, dv (, drpb)


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
@pytest.mark.parametrize('i', range(len(HALF_CASES)), ids=[_case_id(c) for c in HALF_CASES])
def test_half_precision_equals_reference(worker, i, dtype):
    errs = worker[f'{dtype}/{i}']
    assert isinstance(errs, list) and max(errs) < 2e-2, errs


@pytest.mark.parametrize('i', range(len(CASES_3D)), ids=[_case_id(c) for c in CASES_3D])
def test_3d_fp32_equals_reference(worker, i):
    errs = worker[f'3d/{i}']
    assert isinstance(errs, list) and max(errs) < 1e-5, errs


@pytest.mark.parametrize('i', range(len(LANE_CASES)), ids=[_case_id(c) for c in LANE_CASES])
def test_head_dims_that_are_not_powers_of_two(worker, i):
    errs = worker[f'lanes/{i}']
    assert isinstance(errs, list) and max(errs) < 1e-5, errs


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_3d_half_precision_equals_reference(worker, dtype):
    errs = worker[f'3d/{dtype}']
    assert isinstance(errs, list) and max(errs) < 2e-2, errs


def test_3d_configs_cover_depth():
    assert any(c['dilation'][0] > 1 for c in CASES_3D) and any(c['kernel'][0] % 2 == 0 for c in CASES_3D)
    assert any(c['valid'] is not None for c in CASES_3D) and any(len(set(c['shape'])) == 3 for c in CASES_3D)


@pytest.mark.parametrize('step_keys', OTHER_STEPS)
@pytest.mark.parametrize('i', range(len(STEP_CASES)), ids=[_case_id(c) for c in STEP_CASES])
def test_other_block_sizes_equal_reference(worker, i, step_keys):
    errs = worker[f'step{step_keys}/{i}']
    assert isinstance(errs, list) and max(errs) < 1e-5, errs


@pytest.mark.parametrize('tile', TILES, ids=[f'{r}x{c}' for r, c in TILES])
@pytest.mark.parametrize('i', range(len(TILE_CASES)), ids=[_case_id(c) for c in TILE_CASES])
def test_other_tiles_equal_reference(worker, i, tile):
    """The query / key tiles gpu_check's tuning may pick (4x8 on 2 warps, 2x8 on 1): out, dq, dk, dv,
    d(rpb) within 1e-5 of the fp64 reference, 2-D (k up to 9, dilation, valid_size) and 3-D."""
    errs = worker[f'tile{tile[0]}x{tile[1]}/{i}']
    assert isinstance(errs, list) and max(errs) < 1e-5, errs


def test_public_op_and_strided_inputs(worker):
    assert worker['public'] == 'ok', worker['public']


def test_rpb_reads_stay_in_the_table(worker):
    assert worker['rpb_bounds'] == 'ok', worker['rpb_bounds']


def test_compile_fullgraph_and_opcheck(worker):
    assert worker['compile'] == 'ok', worker['compile']


def test_queries_without_keys_give_zeros_and_finite_grads(worker):
    assert worker['no_keys'] == 'ok', worker['no_keys']


def test_every_load_and_store_stays_inside_its_tensors(worker):
    """Every kernel run of the worker (all the cases above) had each address of its loads and stores
    checked against its tensor arguments (the interpreter would otherwise read past a buffer
    silently, and a masked-out value never shows in the results); the checker itself catches a read one
    element past a tensor."""
    assert worker['bounds_checker'] == 'ok', worker['bounds_checker']
    if worker['bounds_checked'] is None:
        pytest.skip("this Triton's interpreter has another layout: the bounds checker could not be installed")
    assert worker['bounds_checked'] > 10_000, worker['bounds_checked']


def check_public_op_and_strided_inputs():
    """``na2d(backend='triton')`` on slices of a fused qkv tensor (strided, read in place), with a
    transposed (non-contiguous) RPB table, and 1-D."""
    from localattn.ops.na import na1d, na2d
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 10, 3, 2, 16, requires_grad=True)
    q, k, v = qkv.unbind(3)
    rpb = torch.randn(2, 9, 9, requires_grad=True)
    out = na2d(q, k, v, 5, dilation=(1, 2), rpb=rpb.transpose(1, 2), backend='triton')
    ref = na2d(q, k, v, 5, dilation=(1, 2), rpb=rpb.transpose(1, 2), backend='reference')
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(out.square().sum(), [qkv, rpb])
    g2 = torch.autograd.grad(ref.square().sum(), [qkv, rpb])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    x = torch.randn(1, 30, 2, 32)
    torch.testing.assert_close(na1d(x, x, x, 7, backend='triton'), na1d(x, x, x, 7, backend='reference'),
                               rtol=1e-5, atol=1e-5)
    # 3-D: slices of a fused qkv tensor, a permuted RPB table
    from localattn.ops.na import na3d
    qkv = torch.randn(1, 4, 6, 7, 3, 1, 16, requires_grad=True)
    q, k, v = qkv.unbind(4)
    rpb = torch.randn(1, 3, 5, 5, requires_grad=True)
    kw = dict(kernel_size=(3, 3, 2), dilation=(1, 2, 1), rpb=rpb.permute(0, 2, 3, 1))
    out = na3d(q, k, v, backend='triton', **kw)
    ref = na3d(q, k, v, backend='reference', **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(out.square().sum(), [qkv, rpb])
    g2 = torch.autograd.grad(ref.square().sum(), [qkv, rpb])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the backward with out, lse and grad_out in other strides than the forward's (a caller of the
    # custom op may hand such in): the same gradients
    q, k, v = (torch.randn(1, 9, 10, 2, 16) for _ in range(3))
    axes = (AxisSpec(9, 5), AxisSpec(10, 5, 2))
    rpb = torch.randn(2, 9, 9)
    out, lse = tri._forward(q, k, v, rpb, axes, 0.25)
    go = torch.randn_like(out)
    want = tri._backward(go, q, k, v, rpb, out, lse, axes, 0.25)
    got = tri._backward(go.transpose(1, 2).contiguous().transpose(1, 2), q, k, v, rpb,
                        out.transpose(1, 2).contiguous().transpose(1, 2),
                        lse.transpose(3, 4).contiguous().transpose(3, 4), axes, 0.25)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def check_rpb_reads_stay_in_the_table():
    """Every RPB read of a pair that passes the window test lies inside the table: with the table's
    margins (which the kernels' unmasked reads of the other pairs touch) filled with NaN instead of
    zeros, outputs and gradients stay finite and exact. Maps that are not multiples of the 8x8 tiles
    (queries outside the map in edge tiles, whose clamped windows would otherwise index outside the
    table) and dilation."""
    from localattn.ops.na.backends.reference import na_reference
    real = tri._bias_table

    def padded(rpb, device, margin):
        table = real(rpb, device, margin)
        if rpb is None:
            return table
        buf = torch.full((table.numel() + 2 * margin,), float('nan'), device=device)
        buf[margin:margin + table.numel()] = table.flatten()
        return buf[margin:margin + table.numel()].view(table.shape)

    tri._bias_table = padded
    try:
        torch.manual_seed(0)
        for shape, ks, dil in (((12, 9), (3, 3), (1, 1)), ((10, 11), (5, 5), (2, 1)), ((20, 13), (7, 7), (1, 1)),
                               ((3, 10, 9), (3, 3, 3), (1, 1, 1))):
            axes = tuple(AxisSpec(n, k, d) for n, k, d in zip(shape, ks, dil))
            b, heads = (2, 2) if len(shape) == 2 else (1, 1)
            leaves = [torch.randn(b, *shape, heads, 16, requires_grad=True) for _ in range(3)]
            leaves.append((0.5 * torch.randn(heads, *(2 * k - 1 for k in ks))).requires_grad_())
            out = tri.na_triton(*leaves[:3], axes, leaves[3], 0.25)
            go = torch.randn_like(out)
            got = [out, *torch.autograd.grad(out, leaves, go)]
            ref = na_reference(*leaves[:3], axes, leaves[3], 0.25)
            want = [ref, *torch.autograd.grad(ref, leaves, go)]
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        tri._bias_table = real


def check_compile_and_opcheck():
    """The kernels are custom ops: ``torch.compile(fullgraph=True)`` traces ``na2d`` / ``na3d`` with
    ``backend='triton'`` without a graph break (``aot_eager``: the compiled graph calls the ops, run
    here by the interpreter) and gives the eager results and gradients; ``torch.library.opcheck``
    checks the ops' schemas, fake implementations and autograd registration."""
    from localattn.ops.na import na2d, na3d
    from localattn.ops.na.indexing import pack_axes
    torch.manual_seed(0)
    for op, shape, ks in ((na2d, (7, 9), 3), (na3d, (3, 5, 6), (2, 3, 3))):
        q, k, v = (torch.randn(1, *shape, 2, 16, requires_grad=True) for _ in range(3))
        rpb = torch.randn(2, *(2 * x - 1 for x in (ks if isinstance(ks, tuple) else (ks,) * len(shape))),
                          requires_grad=True)

        def fn(q, k, v, rpb):
            return op(q, k, v, ks, dilation=2 if len(shape) == 2 else 1, rpb=rpb, backend='triton')
        torch._dynamo.reset()
        out = torch.compile(fn, backend='aot_eager', fullgraph=True)(q, k, v, rpb)
        want = fn(q, k, v, rpb)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        for a, b in zip(torch.autograd.grad(out.sum(), [q, k, v, rpb]),
                        torch.autograd.grad(want.sum(), [q, k, v, rpb])):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # a whole NA layer (qkv projection, RPB parameter, a map smaller than the kernel: padding + valid_size)
    from localattn.layers import NeighborhoodAttention2d
    layer = NeighborhoodAttention2d(32, 2, 5, dilation=2, backend='triton')
    x = torch.randn(1, 6, 9, 32, requires_grad=True)
    torch._dynamo.reset()
    out = torch.compile(layer, backend='aot_eager', fullgraph=True)(x)
    want = layer(x)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    params = [x, layer.rpb, layer.qkv.weight]
    for a, b in zip(torch.autograd.grad(out.square().sum(), params), torch.autograd.grad(want.square().sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    axes = (AxisSpec(5, 3), AxisSpec(6, 3, 2))
    q, k, v = (torch.randn(1, 5, 6, 1, 16, requires_grad=True) for _ in range(3))
    rpb = torch.randn(1, 5, 5, requires_grad=True)
    for bias in (rpb, None):
        torch.library.opcheck(tri.na_triton_forward, (q, k, v, bias, pack_axes(axes), 0.25))


def check_queries_without_keys():
    """valid_size leaving some queries' windows empty: zero outputs, no NaN anywhere."""
    from localattn.ops.na.backends.reference import na_reference
    torch.manual_seed(0)
    axes = (AxisSpec(12, 3, valid=2), AxisSpec(9, 3))
    q, k, v = (torch.randn(1, 12, 9, 1, 16, requires_grad=True) for _ in range(3))
    out = tri.na_triton(q, k, v, axes, None, 0.25)
    ref = na_reference(q, k, v, axes, None, 0.25)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert out[:, 6:].abs().max() == 0
    grads = torch.autograd.grad(out.sum(), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[1][:, 2:].abs().max() == 0  # keys past valid_size get no gradient
    # 3-D: valid_size on the depth axis leaves whole depths without keys
    axes = (AxisSpec(6, 3, valid=2), AxisSpec(4, 3), AxisSpec(5, 3, valid=4))
    q, k, v = (torch.randn(1, 6, 4, 5, 1, 16, requires_grad=True) for _ in range(3))
    out = tri.na_triton(q, k, v, axes, None, 0.25)
    torch.testing.assert_close(out, na_reference(q, k, v, axes, None, 0.25), rtol=1e-5, atol=1e-6)
    assert out[:, 3:].abs().max() == 0 and out[:, :3].abs().max() > 0  # depths 3..: no valid key depth
    grads = torch.autograd.grad(out.sum(), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[1][:, 2:].abs().max() == 0 and grads[1][..., 4:, :, :].abs().max() == 0


def test_supports_and_errors():
    axes = (AxisSpec(9, 3), AxisSpec(9, 3))
    assert tri.supports(axes) is None
    assert 'stride' in tri.supports((AxisSpec(9, 3, stride=2), AxisSpec(9, 3)))
    assert 'causal' in tri.supports((AxisSpec(9, 3, causal=True),))
    assert tri.supports(axes + (AxisSpec(9, 3),)) is None
    assert '4-D' in tri.supports(axes + axes)
    assert 'dropout' in tri.supports(axes, dropout_p=0.1)
    x = torch.randn(1, 9, 9, 1, 16)
    with pytest.raises(ValueError, match='stride'):
        tri.na_triton(x, x, x, (AxisSpec(9, 3, stride=2), AxisSpec(9, 3)), None, 1.0)
    # CUDA's grid limits on heads and batch: refused before any launch (expanded views, no memory)
    big = torch.randn(1, 9, 1, 16).expand(65536, 9, 1, 16)
    with pytest.raises(ValueError, match='batch size 65536'):
        tri.na_triton(big, big, big, (AxisSpec(9, 3),), None, 1.0)
    many = torch.randn(1, 9, 1, 16).expand(1, 9, 70000, 16)
    with pytest.raises(ValueError, match='heads 70000'):
        tri.na_triton(many, many, many, (AxisSpec(9, 3),), None, 1.0)


@pytest.mark.parametrize('shape, dilation', [((56, 56), 1), ((200, 336), 1), ((200, 336), 28)])
def test_tiling_efficiency(shape, dilation):
    """At k = 7 the kernels compute at most 6x the query-key pairs NA needs (flex: 13x-62x before)."""
    axes = tuple(AxisSpec(s, 7, dilation) for s in shape)
    needed = shape[0] * shape[1] * 49
    assert needed <= tri.computed_pairs(axes) <= 6 * needed


def test_computed_pairs_counts_the_kernel_loops():
    """computed_pairs equals an explicit walk over the forward kernel's tiles and key blocks."""
    axes = (AxisSpec(13, 5, 2), AxisSpec(11, 3))
    t = tri.tiling(5, 3)
    assert t.krh > 1  # blocks of several box rows: the rounding below is exercised
    total = 0
    for gy in range(2):
        lgy = len(range(gy, 13, 2))
        for y0 in range(0, lgy, t.tqh):
            sy = [min(max(i - 2, 0), lgy - 5) for i in range(y0, min(y0 + t.tqh, lgy))]
            rows = sy[-1] + 5 - sy[0]
            for x0 in range(0, 11, t.tqw):
                sx = [min(max(i - 1, 0), 11 - 3) for i in range(x0, min(x0 + t.tqw, 11))]
                cols = sx[-1] + 3 - sx[0]
                total += t.tqh * t.tqw * t.krh * -(-rows // t.krh) * t.kw * -(-cols // t.kw)
    assert tri.computed_pairs(axes) == total
    # 3-D: every query tile is one depth and walks the kz key depths of its depth window
    depth = AxisSpec(9, 3, 2)
    assert tri.computed_pairs((depth,) + axes) == 9 * 3 * total


def test_tiling_blocks():
    """Key / query blocks hold about ``step_keys`` tokens, never more rows than a box has; RPB bins fit."""
    for k in range(2, 16):
        for step in (1, 32, 64, 128):
            t = tri.tiling(k, k, step_keys=step)
            assert t.kw >= 2 * k - 1 and t.rpy >= 2 * k - 1 and t.qw >= t.tkw + k - 1
            assert t.krh == 1 or t.krh * t.kw <= step
            assert t.krh <= tri._pow2(t.tqh + k - 1) and t.qrh <= tri._pow2(t.tkh + k - 1)
            assert t.tqh * t.krh < 16 or t.rpy >= 16
        one_d = tri.tiling(1, k)
        assert one_d.tqh == one_d.krh == one_d.qrh == 1
    assert tri.tiling(7, 7, step_keys=1).krh == 1 and tri.tiling(7, 7, step_keys=64).krh == 4
    assert tri.tiling(7, 7, warps=4, stages=3, maxnreg=128)[-3:] == (4, 3, 128)
    with pytest.raises(ValueError, match='step_keys'):
        tri.tiling(7, 7, rows=2)
    # tiles: query and key tiles of 2-D / 3-D calls; 1-D keeps its row of 32
    t = tri.tiling(7, 7, tile=(4, 8))
    assert (t.tqh, t.tqw, t.tkh, t.tkw) == (4, 8, 4, 8) and t.kw == 16 and t.qw == 16
    assert tri.tiling(1, 7, tile=(2, 8))[:2] == (1, 32)
    assert tri.tiling(7, 7, tile=[2, 8]).tqh == 2  # any pair of ints
    for bad in ((3, 8), (2, 4), (32, 16), (8,), 'x', (8, 64)):
        with pytest.raises(ValueError, match=r'tile must be \(rows, columns\)'):
            tri.tiling(7, 7, tile=bad)


def test_smaller_tiles_compute_fewer_pairs():
    """The point of smaller tiles: at k = 7 on NAT's stage-1 map, 8x8 computes 4.4x the pairs NA needs,
    4x8 3.2x, 2x8 2.6x (the key box per query shrinks; the kernels mask the rest)."""
    axes = (AxisSpec(56, 7), AxisSpec(56, 7))
    needed = 56 * 56 * 49
    ratios = [tri.computed_pairs(axes, tile=tile) / needed for tile in ((8, 8), (4, 8), (2, 8))]
    assert [round(r, 1) for r in ratios] == [4.4, 3.2, 2.6]


def test_tuning_by_head_dim():
    bounds = sorted(tri.TUNING)
    assert tri.tuning_for(1) is tri.TUNING[bounds[0]] and tri.tuning_for(bounds[0]) is tri.TUNING[bounds[0]]
    assert tri.tuning_for(bounds[0] + 1) is tri.TUNING[bounds[1]]
    assert tri.tuning_for(4 * bounds[-1]) is tri.TUNING[bounds[-1]]
    assert tri.tiling(7, 7, 32).warps == tri.TUNING[bounds[0]]['warps']
    assert tri.tiling(7, 7, 256).warps == tri.TUNING[bounds[-1]]['warps']


def install_bounds_checker() -> dict:
    """Make the interpreter check every load and store of the worker's kernels (worker side).

    Each launch records the storages of its tensor arguments; every address a load or store touches
    (active lanes only) must lie inside one of them, else the launch fails with an IndexError. Masked
    values are discarded by the kernels, so an out-of-bounds read never shows in the results: this is
    the check that finds one (on a GPU it reads another allocation or faults). ``{'checked': loads and
    stores checked}``; ``{'checked': None}`` where this Triton's interpreter has another layout."""
    import numpy as np
    state = {'checked': None, 'ranges': np.zeros((0, 2), dtype=np.uint64)}
    try:
        from triton.runtime import interpreter as interp
        builder, executor = interp.InterpreterBuilder, interp.GridExecutor
        load, store, init_args = builder.create_masked_load, builder.create_masked_store, executor._init_args_hst
    except (ImportError, AttributeError):  # pragma: no cover - another interpreter layout
        return state
    state['checked'] = 0

    def record(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        ranges = [(a.untyped_storage().data_ptr(), a.untyped_storage().data_ptr() + a.untyped_storage().nbytes())
                  for a in [*args_hst, *kwargs_hst.values()] if isinstance(a, torch.Tensor)]
        state['ranges'] = np.array(ranges, dtype=np.uint64).reshape(-1, 2)
        return args_hst, kwargs_hst

    def check(ptrs, mask, what):
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        addr = np.asarray(ptrs.data, dtype=np.uint64)
        if mask is not None:
            addr = addr[np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)]
        addr = addr.ravel()
        lo, hi = state['ranges'][:, 0], state['ranges'][:, 1]
        inside = ((addr[:, None] >= lo) & (addr[:, None] + np.uint64(size) <= hi)).any(1)
        state['checked'] += 1
        if not inside.all():
            raise IndexError(f'{what} of {int((~inside).sum())} of {inside.size} active lanes outside every '
                             'tensor argument of the launch')

    def checked_load(self, ptrs, mask, other, *args):
        check(ptrs, mask, 'load')
        return load(self, ptrs, mask, other, *args)

    def checked_store(self, ptrs, value, mask, *args):
        check(ptrs, mask, 'store')
        return store(self, ptrs, value, mask, *args)

    builder.create_masked_load, builder.create_masked_store = checked_load, checked_store
    executor._init_args_hst = record
    return state


def check_bounds_checker(state: dict) -> None:
    """The checker catches a read one element past a tensor, and lets a masked one pass."""
    import triton
    import triton.language as tl

    @triton.jit
    def shifted_copy(X, Y, n, shift, MASKED: tl.constexpr):
        i = tl.arange(0, 16) + shift
        if MASKED:
            tl.store(Y + i - shift, tl.load(X + i, mask=i < n, other=0.), mask=i - shift < n)
        else:
            tl.store(Y + i - shift, tl.load(X + i), mask=i - shift < n)

    x, y = torch.arange(16.), torch.zeros(16)
    shifted_copy[(1,)](x, y, 16, 1, MASKED=True)
    assert y.tolist() == list(range(1, 16)) + [0.]
    try:
        shifted_copy[(1,)](x, y, 16, 1, MASKED=False)
    except Exception as e:  # noqa: BLE001 - the interpreter wraps it
        assert 'outside every tensor argument' in str(e), e
    else:
        raise AssertionError('a read past the end of x was not caught')


def _worker_main() -> None:
    results = {}
    bounds = install_bounds_checker()

    def attempt(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 - reported to the test process
            results[name] = f'{type(e).__name__}: {e}'[:2000]

    for i, case in enumerate(FP32_CASES):
        attempt(f'fp32/{i}', lambda: run_case(case, torch.float32))
    for i, case in enumerate(HALF_CASES):
        for dtype in (torch.float16, torch.bfloat16):
            attempt(f'{str(dtype)[6:]}/{i}', lambda: run_case(case, dtype))
    for i, case in enumerate(CASES_3D):
        attempt(f'3d/{i}', lambda: run_case(case, torch.float32))
    for dtype in (torch.float16, torch.bfloat16):
        attempt(f'3d/{str(dtype)[6:]}', lambda: run_case(CASES_3D[0], dtype))
    for i, case in enumerate(LANE_CASES):
        attempt(f'lanes/{i}', lambda: run_case(case, torch.float32))
    for step_keys in OTHER_STEPS:
        for i, case in enumerate(STEP_CASES):
            attempt(f'step{step_keys}/{i}', lambda: run_with_step_keys(case, step_keys))
    for tile in TILES:
        for i, case in enumerate(TILE_CASES):
            attempt(f'tile{tile[0]}x{tile[1]}/{i}', lambda: run_with_tile(case, tile))
    attempt('public', lambda: (check_public_op_and_strided_inputs(), 'ok')[1])
    attempt('no_keys', lambda: (check_queries_without_keys(), 'ok')[1])
    attempt('compile', lambda: (check_compile_and_opcheck(), 'ok')[1])
    attempt('rpb_bounds', lambda: (check_rpb_reads_stay_in_the_table(), 'ok')[1])
    attempt('bounds_checker', lambda: (check_bounds_checker(bounds), 'ok')[1])
    results['bounds_checked'] = bounds['checked']
    print(json.dumps(results))


if __name__ == '__main__':
    assert os.environ.get('TRITON_INTERPRET') == '1', 'the worker needs TRITON_INTERPRET=1'
    _worker_main()


@pytest.mark.parametrize('dtype, one_d, depth', [('bf16', False, False), ('fp32', False, False), ('fp16', True, False),
                                                 ('bf16', False, True)])
def test_kernels_compile_for_hopper(dtype, one_d, depth):
    """Triton's front end (source -> TTIR) accepts every kernel for sm90, on a machine without a GPU.

    The interpreter runs Python semantics and lets through what the compiler rejects (e.g. a plain
    module-level float read inside a kernel); this catches that class of error before a GPU does.
    """
    compiler = pytest.importorskip('triton.compiler')
    try:
        from triton._C import libtriton
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
    except ImportError as e:  # pragma: no cover - another triton layout
        pytest.skip(f'triton compiler internals moved: {e}')
    from localattn.ops.na.backends import _triton_kernels as kernels
    t = tri.tiling(1 if one_d else 7, 7)
    pointers = dict({n: f'*{dtype}' for n in ('Q', 'K', 'V', 'Out', 'DO', 'DQ', 'DK', 'DV')},
                    LSE='*fp32', DELTA='*fp32', RPB='*fp32', DRPB='*fp32')
    consts = dict(D=32, BD=32, HAS_RPB=True, IEEE=dtype == 'fp32', UPCAST=False, DEPTH=depth,
                  **{name.upper(): value for name, value in t._asdict().items()})
    target = GPUTarget('cuda', 90, 32)
    backend = make_backend(target)
    options = backend.parse_options({})
    for fn in (kernels.na_fwd_kernel, kernels.na_bwd_dq_kernel, kernels.na_bwd_dkdv_kernel):
        sig, constexprs = {}, {}
        for i, p in enumerate(fn.params):
            if p.is_constexpr:
                sig[p.name] = 'constexpr'
                constexprs[(i,)] = consts[p.name]
            elif p.name in pointers:
                sig[p.name] = pointers[p.name]
            else:
                sig[p.name] = 'fp32' if p.name.startswith('scale') else 'i32'
        context = libtriton.ir.context()
        libtriton.ir.load_dialects(context)
        backend.load_dialects(context)
        src = compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs)
        module = src.make_ir(target, options, backend.get_codegen_implementation(options),
                             backend.get_module_map(), context)
        assert 'tt.dot' in str(module)


class _FakeProbe:
    """Stands in for ``interpreter_probe_kernel``: ``[grid](out, n)`` raises or stores ``result``."""

    def __init__(self, error=None, result=None):
        self.error, self.result = error, result

    def __getitem__(self, grid):
        def launch(out, n):
            if self.error is not None:
                raise self.error
            out.fill_(n if self.result is None else self.result)
        return launch


@pytest.mark.parametrize('fake, match', [
    (_FakeProbe(error=TypeError('only 0-dimensional arrays can be converted to Python scalars')),
     r'cannot run a loop .* numpy .*triton>=3\.7'),
    (_FakeProbe(result=1), 'ran a 3-step loop 1 times')])
def test_interpreter_probe_names_the_incompatibility(monkeypatch, fake, match):
    """Triton 3.6's interpreter fails every kernel under numpy 2.4 from deep inside; the backend's
    one-time probe turns that into an error naming both versions and the fix."""
    from localattn.ops.na.backends import _triton_kernels as kernels
    monkeypatch.setattr(kernels, 'interpreter_probe_kernel', fake)
    with pytest.raises(RuntimeError, match=match):
        tri._interpreter_runs_loops.__wrapped__()
    monkeypatch.setattr(kernels, 'interpreter_probe_kernel', _FakeProbe())
    assert tri._interpreter_runs_loops.__wrapped__() is None


def _compile_keys(monkeypatch, calls) -> dict[str, set[str]]:
    """Run ``calls`` (each launches the kernels through the backend) with the launches replaced by
    Triton's own argument binder for sm90: ``{kernel: {specialisation key}}``, the keys Triton's launch
    would look its compile cache up with (argument types, divisibility / alignment specialisation,
    constexprs, launch options). A new key on a GPU is a new compilation."""
    import copy
    import types
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as e:  # pragma: no cover - another triton layout
        pytest.skip(f'triton runtime internals moved: {e}')
    from localattn.ops.na.backends import _triton_kernels as kernels
    backend = make_backend(GPUTarget('cuda', 90, 32))
    keys: dict[str, set[str]] = {name: set() for name in tri.KERNELS}

    class Recorder:
        def __init__(self, name):
            fn = getattr(kernels, name)
            self.name = name
            self.binder = create_function_from_signature(fn.signature, [copy.copy(p) for p in fn.params], backend)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                _, spec, options = self.binder(*args, **kwargs)
                keys[self.name].add(repr((spec, sorted(options.items()))))
            return launch

    monkeypatch.setattr(tri, '_kernels', lambda: types.SimpleNamespace(**{n: Recorder(n) for n in tri.KERNELS}))
    for call in calls:
        call()
    return keys


def _fwd_bwd(q, k, v, rpb, axes):
    def call():
        out, lse = tri._forward(q, k, v, rpb, axes, 0.125)
        tri._backward(torch.empty_like(out), q, k, v, rpb, out, lse, axes, 0.125)
    return call


@pytest.mark.parametrize('ndim, dtype', [(2, torch.float32), (2, torch.bfloat16), (1, torch.bfloat16),
                                         (3, torch.bfloat16)])
def test_one_compilation_for_every_input_size(monkeypatch, ndim, dtype):
    """Sizes are run-time arguments: 20 input sizes give each kernel one compile key, for contiguous
    q/k/v and for the slices of a fused qkv projection the NA layers pass, with and without dilation.
    2-D: the stage-1 maps of detection inputs (odd and even, 120-336 tokens a side); 1-D: 100-1000
    tokens; 3-D: 4-9 x 10-40 x 10-40. (Without the kernels' ``do_not_specialize`` the 2-D calls give 7
    keys per kernel: Triton specialises integers on divisibility by 16.)"""
    rng = random.Random(ndim)
    calls = []
    for i in range(20):
        if ndim == 2:
            shape = (rng.randrange(480, 1345, 32) // 4 + i % 2, rng.randrange(480, 1345, 32) // 4)
        elif ndim == 1:
            shape = (rng.randrange(100, 1000),)
        else:
            shape = (rng.randrange(4, 10), rng.randrange(10, 41), rng.randrange(10, 41))
        kernel = (3,) * (ndim == 3) + (7,) * min(ndim, 2)
        dil = [1] * ndim if i % 3 else [max(1, n // k) for n, k in zip(shape, kernel)]
        axes = tuple(AxisSpec(n, k, d) for n, k, d in zip(shape, kernel, dil))
        rpb = torch.randn(2, *(2 * k - 1 for k in kernel))
        if i % 2:
            q, k, v = torch.empty(1, *shape, 3, 2, 32, dtype=dtype).unbind(-3)
        else:
            q, k, v = (torch.empty(1, *shape, 2, 32, dtype=dtype) for _ in range(3))
        calls.append(_fwd_bwd(q, k, v, rpb, axes))
    keys = _compile_keys(monkeypatch, calls)
    assert {name: len(k) for name, k in keys.items()} == {name: 1 for name in tri.KERNELS}, keys
