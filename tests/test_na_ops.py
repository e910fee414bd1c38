"""Tests of the neighbourhood-attention ops ``localattn.ops.na.na1d/na2d/na3d`` and their backends.

The oracle below is written from the rule in the NA reference notes, independently of the library:
a Python loop over query positions, each with its explicit neighbour set (product of per-axis
windows), a plain softmax and a weighted sum.
"""
from __future__ import annotations

import itertools
import random
import shutil
import types
import warnings

import pytest
import torch

from localattn.ops.na import BACKENDS, na1d, na2d, na3d, native
from localattn.ops.na.backends.tiles import na_tiles
from localattn.ops.na.functional import DTYPES, natten_available, resolve_backend
from localattn.ops.na.indexing import AxisSpec

OPS = {1: na1d, 2: na2d, 3: na3d}
HAS_CXX = shutil.which('g++') is not None or shutil.which('c++') is not None
CPU_BACKENDS = ('reference', 'unrolled', 'native', 'tiles')


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    """A CPU implementation, as the ``backend`` argument to pass."""
    if request.param == 'native' and not HAS_CXX:
        pytest.skip('the native backend needs a C++ compiler')
    return request.param


def window(length: int, kernel: int, dilation: int, stride: int, causal: bool, i: int) -> list[int]:
    """Global key indices that query ``i`` sees along one axis."""
    g, li = i % dilation, i // dilation
    lg = length // dilation + (1 if g < length % dilation else 0)
    wl, wr = kernel // 2, kernel // 2 + kernel % 2 - 1
    if causal:
        leader = min((li // stride) * stride + stride - 1, lg - 1)
        start, end = max(leader - wl - wr, 0), min(li + 1, lg)
    else:
        leader = min((li // stride) * stride + stride // 2, lg - 1)
        start = max(leader - wl, 0) + (leader + wr >= lg) * (lg - wr - leader - 1)
        end = start + kernel
    return [g + dilation * t for t in range(start, end)]


def oracle(q, k, v, kernel, dilation, stride, causal, rpb=None, scale=None, valid=None):
    """Brute-force NA in fp64 on ``[B, *spatial, heads, c]``; per-axis parameter tuples."""
    q, k, v = (x.detach().double() for x in (q, k, v))
    spatial = q.shape[1:-2]
    valid = valid or spatial
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros_like(q)
    for pos in itertools.product(*map(range, spatial)):
        per_axis = [[j for j in window(n, kk, d, s, c, i) if j < vl]
                    for n, kk, d, s, c, i, vl in zip(spatial, kernel, dilation, stride, causal, pos, valid)]
        keys = list(itertools.product(*per_axis))
        if not keys:
            continue
        kk = torch.stack([k[(slice(None), *key)] for key in keys], 1)  # [B, M, h, c]
        vv = torch.stack([v[(slice(None), *key)] for key in keys], 1)
        logits = torch.einsum('bhc,bmhc->bhm', q[(slice(None), *pos)], kk) * scale
        if rpb is not None:
            idx = [tuple((kj - qi) // d + ks - 1 for kj, qi, d, ks in zip(key, pos, dilation, kernel))
                   for key in keys]
            logits = logits + torch.stack([rpb.detach().double()[(slice(None), *i)] for i in idx], -1)
        out[(slice(None), *pos)] = torch.einsum('bhm,bmhc->bhc', logits.softmax(-1), vv)
    return out


def random_case(seed: int) -> dict:
    """A random NA configuration (1-3 axes, borders, dilation, even kernels, stride, causal, rpb)."""
    rng = random.Random(seed)
    n = rng.choice([1, 2, 2, 2, 3])
    spatial = [rng.randint(3, 13 if n < 3 else 6) for _ in range(n)]
    kernel = [rng.randint(1, min(size, 5)) for size in spatial]
    dilation = [rng.randint(1, size // kk) for size, kk in zip(spatial, kernel)]
    stride = [rng.randint(1, kk) if rng.random() < 0.3 else 1 for kk in kernel]
    causal = [rng.random() < 0.2 for _ in spatial]
    valid = [rng.randint(1, size) if rng.random() < 0.15 else size for size in spatial]
    rpb = all(s == 1 for s in stride) and rng.random() < 0.6
    tiles = tuple(rng.randint(1, 3) * s for s in stride)
    return dict(spatial=spatial, kernel=kernel, dilation=dilation, stride=stride, causal=causal,
                valid=valid, rpb=rpb, tiles=tiles)


def make_inputs(spatial, kernel, rpb, heads=2, dim=4, batch=2, dtype=torch.float64, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, *spatial, heads, dim, generator=gen, dtype=dtype).requires_grad_(grad)
               for _ in range(3))
    bias = (torch.randn(heads, *(2 * kk - 1 for kk in kernel), generator=gen, dtype=dtype).requires_grad_(grad)
            if rpb else None)
    return q, k, v, bias


def axes_of(case: dict) -> tuple[AxisSpec, ...]:
    return tuple(AxisSpec(*p, None if vl == n else vl) for p, vl, n in zip(
        zip(case['spatial'], case['kernel'], case['dilation'], case['stride'], case['causal']),
        case['valid'], case['spatial']))


@pytest.mark.parametrize('seed', range(32))
def test_random_configs_match_oracle(seed):
    case = random_case(seed)
    q, k, v, rpb = make_inputs(case['spatial'], case['kernel'], case['rpb'], seed=seed)
    expected = oracle(q, k, v, case['kernel'], case['dilation'], case['stride'], case['causal'], rpb,
                      valid=case['valid'])
    kwargs = dict(dilation=tuple(case['dilation']), stride=tuple(case['stride']),
                  is_causal=tuple(case['causal']), rpb=rpb, valid_size=tuple(case['valid']))
    for backend in ('reference', 'unrolled', 'tiles') + (('native',) if HAS_CXX else ()):
        out = OPS[len(case['spatial'])](q, k, v, tuple(case['kernel']), backend=backend, **kwargs)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=f'{backend} {case}')
    # torch tiles with explicit small tiles: many tiles per axis, halos clipped at borders and group ends
    out = na_tiles(q, k, v, axes_of(case), rpb, q.shape[-1] ** -0.5, tiles=case['tiles'])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=str(case))


@pytest.mark.parametrize('spatial,kernel,dilation,stride,causal', [
    ((9, 6), (4, 3), (2, 1), (1, 1), (False, False)),  # even kernel, 9 % 2 != 0 (groups 5 and 4)
    ((11, 7), (3, 2), (3, 3), (1, 1), (False, False)),  # groups of unequal length on both axes
    ((10, 9), (5, 3), (1, 2), (2, 3), (False, False)),  # stride (leader clamped at group end)
    ((12,), (5,), (2,), (1,), (True,)),  # causal 1-D with dilation
    ((12,), (4,), (1,), (3,), (True,)),  # causal + stride
    ((8, 7), (3, 3), (1, 2), (1, 1), (True, False)),  # causal on one axis of 2-D
    ((5, 6, 4), (3, 2, 3), (1, 2, 1), (1, 1, 1), (True, False, False)),  # 3-D, causal time axis
])
def test_named_cases(backend, spatial, kernel, dilation, stride, causal):
    rpb = all(s == 1 for s in stride)
    q, k, v, bias = make_inputs(spatial, kernel, rpb)
    out = OPS[len(spatial)](q, k, v, kernel, dilation=dilation, stride=stride, is_causal=causal, rpb=bias,
                            backend=backend)
    torch.testing.assert_close(out, oracle(q, k, v, kernel, dilation, stride, causal, bias))


def test_window_rule_examples():
    """Spot values of the per-axis rule: shifted borders, even kernels, groups, stride, causal."""
    assert window(10, 3, 1, 1, False, 0) == [0, 1, 2]
    assert window(10, 3, 1, 1, False, 9) == [7, 8, 9]
    assert window(10, 4, 1, 1, False, 5) == [3, 4, 5, 6]  # 2 left, 1 right
    assert window(9, 3, 2, 1, False, 8) == [4, 6, 8]  # group 0 has length 5
    assert window(9, 3, 2, 1, False, 7) == [3, 5, 7]  # group 1 has length 4
    assert window(10, 3, 1, 3, False, 4) == [3, 4, 5]  # leader 4
    assert window(10, 3, 1, 3, False, 9) == [7, 8, 9]  # leader min(10, 9) = 9
    assert window(10, 3, 1, 1, True, 1) == [0, 1]
    assert window(10, 3, 1, 1, True, 5) == [3, 4, 5]


def test_kernel_equal_size_is_full_attention_plus_bias(backend):
    q, k, v, rpb = make_inputs((5, 6), (5, 6), rpb=True)
    out = na2d(q, k, v, (5, 6), rpb=rpb, backend=backend)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(6), indexing='ij')
    dy = ys.flatten()[None, :] - ys.flatten()[:, None] + 4  # [query, key]
    dx = xs.flatten()[None, :] - xs.flatten()[:, None] + 5
    bias = rpb[:, dy, dx]  # [h, N, N]
    qf, kf, vf = (x.reshape(2, 30, 2, 4).transpose(1, 2) for x in (q, k, v))
    attn = (qf @ kf.transpose(-1, -2) * 0.5 + bias).softmax(-1)
    torch.testing.assert_close(out, (attn @ vf).transpose(1, 2).reshape(out.shape))


def test_stride_equal_kernel_is_window_attention(backend):
    q, k, v, _ = make_inputs((6, 9), (3, 3), rpb=False)
    out = na2d(q, k, v, 3, stride=3, backend=backend)

    def part(x):  # [B, 6, 9, h, c] -> [B, h, windows, 9, c]
        return x.reshape(2, 2, 3, 3, 3, 2, 4).permute(0, 5, 1, 3, 2, 4, 6).reshape(2, 2, 6, 9, 4)

    attn = (part(q) @ part(k).transpose(-1, -2) * 0.5).softmax(-1)
    windows = (attn @ part(v)).reshape(2, 2, 2, 3, 3, 3, 4).permute(0, 2, 4, 3, 5, 1, 6)
    torch.testing.assert_close(out, windows.reshape(out.shape))


@pytest.mark.parametrize('spatial,kernel,dilation,stride,causal,rpb', [
    ((7,), (3,), (2,), (1,), (False,), True),
    ((6,), (3,), (1,), (1,), (True,), True),
    ((5, 4), (3, 2), (1, 2), (1, 1), (False, False), True),
    ((5, 4), (3, 3), (1, 1), (2, 3), (False, True), False),
    ((3, 4, 3), (2, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False), True),
])
def test_gradcheck(backend, spatial, kernel, dilation, stride, causal, rpb):
    q, k, v, bias = make_inputs(spatial, kernel, rpb, heads=1, dim=2, batch=1, grad=True)
    inputs = (q, k, v) + ((bias,) if rpb else ())

    def fn(q, k, v, bias=None):
        return OPS[len(spatial)](q, k, v, kernel, dilation=dilation, stride=stride, is_causal=causal,
                                 rpb=bias, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=len(spatial) == 3)


@pytest.mark.parametrize('threads', [1, 5])
def test_gradients_match_reference(backend, threads):
    """With 1 thread the compiled kernel scatters dk/dv per (batch, head) slice; with more threads than
    slices (here 4) it takes the second pass per key."""
    q, k, v, rpb = make_inputs((9, 8), (3, 4), rpb=True, grad=True)
    grad = torch.randn(q.shape, dtype=q.dtype)
    grads = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in ('reference', backend):
            out = na2d(q, k, v, (3, 4), dilation=(1, 2), rpb=rpb, valid_size=(8, 7), backend=name)
            grads.append(torch.autograd.grad(out, (q, k, v, rpb), grad))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_low_precision(backend, dtype, tol):
    q, k, v, rpb = make_inputs((8, 7), (3, 3), rpb=True, dim=8, dtype=dtype, grad=True)
    expected = oracle(q, k, v, (3, 3), (2, 1), (1, 1), (False, False), rpb)
    out = na2d(q, k, v, 3, dilation=(2, 1), rpb=rpb, backend=backend)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    out.float().square().sum().backward()
    assert all(x.grad.dtype == dtype and torch.isfinite(x.grad).all() for x in (q, k, v, rpb))


def test_valid_size_masks_keys_and_zeroes_empty_queries(backend):
    q, k, v, rpb = make_inputs((6, 9), (3, 3), rpb=True)
    # dilation 3 on the second axis, valid width 2: queries of group 2 have no valid key at all
    expected = oracle(q, k, v, (3, 3), (1, 3), (1, 1), (False, False), rpb, valid=(4, 2))
    assert expected[:, :, 2::3].abs().sum() == 0
    out = na2d(q, k, v, 3, dilation=(1, 3), rpb=rpb, valid_size=(4, 2), backend=backend)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('backend', ['reference', 'unrolled', 'tiles'])
def test_dropout(backend):
    """Dropout on the attention weights: random per call and element, unbiased (mean over 400 draws)."""
    q, k, v, _ = make_inputs((5, 5), (3, 3), rpb=False, heads=1, batch=1)
    plain = na2d(q, k, v, 3, backend=backend)
    torch.manual_seed(0)
    q, k, v = (x.expand(400, *x.shape[1:]) for x in (q, k, v))
    samples = na2d(q, k, v, 3, dropout_p=0.3, backend=backend)
    assert not torch.allclose(samples[0], samples[1])
    torch.testing.assert_close(samples.mean(0, keepdim=True), plain, rtol=0, atol=0.1)


def test_auto_on_cpu_is_native():
    if not HAS_CXX:
        pytest.skip('no C++ compiler')
    q, k, v, rpb = make_inputs((7, 7), (3, 3), rpb=True)
    assert torch.equal(na2d(q, k, v, 3, rpb=rpb), na2d(q, k, v, 3, rpb=rpb, backend='native'))


def test_compiled_kernel_builds():
    """The compiled CPU kernel is the fast path; it must build wherever a C++ compiler exists."""
    if not HAS_CXX:
        pytest.skip('no C++ compiler')
    assert native.library() is not None
    assert native.unavailable_reason() is None


def test_flex_forward_on_cpu():
    pytest.importorskip('torch.nn.attention.flex_attention')
    for seed in range(4):
        case = random_case(seed)
        q, k, v, rpb = make_inputs(case['spatial'], case['kernel'], case['rpb'], dim=8, seed=seed)
        kwargs = dict(dilation=tuple(case['dilation']), stride=tuple(case['stride']),
                      is_causal=tuple(case['causal']), rpb=rpb, valid_size=tuple(case['valid']))
        op = OPS[len(case['spatial'])]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = op(q, k, v, tuple(case['kernel']), backend='flex', **kwargs)
        torch.testing.assert_close(out, op(q, k, v, tuple(case['kernel']), backend='reference', **kwargs))


def test_flex_gradients_through_rpb(monkeypatch):
    """FlexAttention refuses backward on CPU; its eager math path still runs when the guard is lifted,
    which checks that our mask/score_mod give the right gradients, RPB included."""
    flex_module = pytest.importorskip('torch.nn.attention.flex_attention')
    monkeypatch.setattr(flex_module, '_validate_device', lambda *args: None)
    q, k, v, rpb = make_inputs((7, 6), (3, 3), rpb=True, dim=8, grad=True)
    grad = torch.randn(q.shape, dtype=q.dtype)
    grads = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for backend in ('reference', 'flex'):
            out = na2d(q, k, v, 3, dilation=(2, 1), rpb=rpb, backend=backend)
            grads.append(torch.autograd.grad(out, (q, k, v, rpb), grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not natten_available(), reason='natten is not installed')
def test_natten_matches_reference():
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    q, k, v, _ = make_inputs((9, 10), (3, 3), rpb=False, dim=16, dtype=torch.float32)
    q, k, v = (x.to(device) for x in (q, k, v))
    out = na2d(q, k, v, 3, dilation=2, backend='natten')
    torch.testing.assert_close(out, na2d(q, k, v, 3, dilation=2, backend='reference'), rtol=1e-4, atol=1e-4)


def test_memory_is_linear(backend):
    """The native and tiles backends keep O(N) state: its largest saved tensor grows linearly with the pixels."""
    if backend == 'reference':
        pytest.skip('the reference gathers k*k neighbours per query')

    def largest_saved(size: int) -> int:
        q, k, v, rpb = make_inputs((size, size), (5, 5), rpb=True, heads=1, batch=1, dtype=torch.float32,
                                   grad=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            na2d(q, k, v, 5, rpb=rpb, backend=backend)
        return max(sizes)

    assert largest_saved(64) <= 4.5 * largest_saved(32)
    assert largest_saved(64) < (64 * 64) ** 2 // 16  # far from N x N scores


@pytest.mark.parametrize('call,match', [
    (lambda q: na2d(q, q, q, 7, dilation=2),
     r'kernel_size \* dilation \(7 \* 2 = 14\) must be <= the size of axis 1 \(10\)'),
    (lambda q: na2d(q, q, q, (3, 13)), r'kernel_size .* axis 2 \(12\)'),
    (lambda q: na2d(q, q, q, 0), 'kernel_size must be positive'),
    (lambda q: na2d(q, q, q, 3, dilation=(1, 0)), 'dilation must be positive'),
    (lambda q: na2d(q, q, q, 3, stride=0), 'stride must be positive'),
    (lambda q: na2d(q, q, q, 3, stride=4), r'stride \(4\) must be <= kernel_size'),
    (lambda q: na2d(q, q, q, (3, 3, 3)), 'kernel_size must be'),
    (lambda q: na2d(q, q, q, 3.0), 'kernel_size must be'),
    (lambda q: na2d(q, q, q, 3, is_causal=1), 'is_causal must be'),
    (lambda q: na2d(q, q, q, 3, rpb=torch.zeros(2, 5, 4)), r'rpb must have shape .*\(2, 5, 5\)'),
    (lambda q: na2d(q, q, q, 3, rpb=torch.zeros(3, 5, 5)), 'rpb must have shape'),
    (lambda q: na2d(q, q, q, 3, stride=2, rpb=torch.zeros(2, 5, 5)), 'rpb requires stride 1'),
    (lambda q: na2d(q, q[:, :9], q, 3), 'key shape'),
    (lambda q: na2d(q, q, q.double(), 3), 'value dtype'),
    (lambda q: na2d(q, q, q.int(), 3), 'value dtype must be one of'),
    (lambda q: na2d(q[0], q[0], q[0], 3), 'query must have 5 dims'),
    (lambda q: na1d(q, q, q, 3), 'query must have 4 dims'),
    (lambda q: na3d(q, q, q, 3), 'query must have 6 dims'),
    (lambda q: na2d(q, q, q, 3, backend='cuda'),
     r"backend must be one of \('auto', 'reference', 'unrolled', 'native', 'tiles', 'flex', 'natten', 'triton'\)"),
    (lambda q: na2d(q, q, q, 3, valid_size=(0, 4)), r'valid_size \(0\) must be in \[1, 10\]'),
    (lambda q: na2d(q, q, q, 3, dropout_p=1.0), 'dropout_p must be in'),
    (lambda q: na2d(q, q, q, 3, dropout_p=0.1, backend='flex'), 'flex.* dropout_p'),
    (lambda q: na2d(q, q, q, 3, rpb=torch.zeros(2, 5, 5), backend='natten'), 'natten.* rpb'),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(1, 10, 12, 2, 4))


def test_backend_names():
    assert BACKENDS == ('auto', 'reference', 'unrolled', 'native', 'tiles', 'flex', 'natten', 'triton')


def test_empty_batch():
    q = torch.zeros(0, 5, 5, 1, 4)
    assert na2d(q, q, q, 3).shape == q.shape


def test_scale_argument(backend):
    q, k, v, _ = make_inputs((6, 5), (3, 3), rpb=False)
    out = na2d(q, k, v, 3, scale=0.3, backend=backend)
    torch.testing.assert_close(out, oracle(q, k, v, (3, 3), (1, 1), (1, 1), (False, False), scale=0.3))


# --- backend resolution (localattn.ops.na.functional.resolve_backend) ---------------------------------

def _call(device='cpu', dtype=torch.float32):
    """What ``resolve_backend`` reads of a query: device and dtype (a CUDA query without a GPU)."""
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype)


AXES = (AxisSpec(8, 3), AxisSpec(8, 3))


def resolve(backend, device='cpu', dtype=torch.float32, dropout_p=0.0, rpb=None, axes=AXES):
    return resolve_backend(backend, _call(device, dtype), rpb, axes, dropout_p)


@pytest.fixture
def tracing(monkeypatch):
    """Pretend to run under torch.compile (``'compile'``) or torch.export (``'export'``)."""
    def enter(mode):
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
        monkeypatch.setattr(torch.compiler, 'is_exporting', lambda: mode == 'export')
    return enter


@pytest.fixture
def no_kernel(monkeypatch):
    monkeypatch.setattr(native, 'library', lambda: None)


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
@pytest.mark.parametrize('dtype', DTYPES)
def test_auto_eager_cpu_is_native(dtype):
    assert resolve('auto', dtype=dtype) == 'native'


def test_auto_eager_table():
    assert resolve('auto', dropout_p=0.1) == 'tiles'
    assert resolve('auto', 'cuda', torch.float64) == 'tiles'
    assert resolve('auto', 'cuda', torch.float16, dropout_p=0.1) == 'tiles'
    assert resolve('auto', 'mps') == 'tiles'
    rpb = torch.zeros(2, 5, 5)
    assert resolve('auto', 'cuda', torch.bfloat16, rpb=rpb) == 'flex'  # natten takes no rpb
    assert resolve('auto', 'cuda', torch.float32) == ('natten' if natten_available() else 'flex')


@pytest.fixture
def triton_on_cuda(monkeypatch):
    """``TRITON_ON_CUDA`` set and triton usable (as on a GPU machine with triton installed)."""
    from localattn.ops.na import functional
    monkeypatch.setattr(functional, 'TRITON_ON_CUDA', True)
    monkeypatch.setattr(functional, 'triton_available', lambda: True)


CUDA_3D = (AxisSpec(4, 3), AxisSpec(8, 3), AxisSpec(8, 3, 2))


def test_auto_keeps_triton_opt_in_until_enabled(monkeypatch):
    """``TRITON_ON_CUDA`` is off until a GPU check has passed: CUDA calls go to flex even where triton runs."""
    from localattn.ops.na import functional
    monkeypatch.setattr(functional, 'triton_available', lambda: True)
    assert resolve('auto', 'cuda', torch.bfloat16, rpb=torch.zeros(2, 5, 5)) == 'flex'


def test_auto_gives_cuda_calls_to_triton_once_enabled(triton_on_cuda):
    rpb = torch.zeros(2, 5, 5)
    assert resolve('auto', 'cuda', torch.bfloat16, rpb=rpb) == 'triton'
    assert resolve('auto', 'cuda', torch.float32, axes=CUDA_3D) == 'triton'
    assert resolve('auto', 'cuda', torch.float16, axes=(AxisSpec(8, 3, stride=2), AxisSpec(8, 3))) == 'flex'
    assert resolve('auto', 'cuda', torch.float16, rpb=rpb, axes=(AxisSpec(8, 3, causal=True),) * 2) == 'flex'
    assert resolve('auto', 'cuda', torch.float64, rpb=rpb) == 'tiles'
    assert resolve('auto', 'cuda', torch.float16, rpb=rpb, dropout_p=0.1) == 'tiles'
    assert resolve('auto', 'mps', torch.float16, rpb=rpb) == 'tiles'
    assert resolve('auto', 'cpu', torch.float32, rpb=rpb) in ('native', 'tiles')
    # calls natten covers (no rpb, no valid_size) keep natten when it is installed
    assert resolve('auto', 'cuda', torch.float16) == ('natten' if natten_available() else 'triton')


def test_auto_under_compile_gives_cuda_calls_to_triton_once_enabled(tracing, triton_on_cuda):
    tracing('compile')
    assert resolve('auto', 'cuda', torch.bfloat16) == 'triton'
    assert resolve('auto', 'cuda', torch.float16, axes=CUDA_3D) == 'triton'
    assert resolve('auto', 'cuda', torch.float16, axes=(AxisSpec(8, 3, stride=2), AxisSpec(8, 3))) == 'flex'
    assert resolve('auto', 'cuda', torch.float64) == 'reference'
    assert resolve('auto', 'cuda', dropout_p=0.1) == 'reference'


def test_auto_without_kernel_is_tiles(no_kernel):
    assert resolve('auto') == 'tiles'
    assert resolve('auto', dtype=torch.float64) == 'tiles'


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
def test_auto_under_compile(tracing):
    tracing('compile')
    assert resolve('auto') == 'native'
    assert resolve('auto', dropout_p=0.1) == 'reference'
    assert resolve('auto', 'cuda', torch.float16) == 'flex'
    assert resolve('auto', 'cuda', torch.float64) == 'reference'
    assert resolve('auto', 'cuda', dropout_p=0.1) == 'reference'


def test_auto_under_compile_without_kernel(tracing, no_kernel):
    tracing('compile')
    assert resolve('auto') == 'reference'


@pytest.mark.parametrize('device,dtype,dropout_p', [('cpu', torch.float32, 0.0), ('cpu', torch.float64, 0.1),
                                                    ('cuda', torch.float16, 0.0)])
def test_auto_under_export_is_unrolled(tracing, device, dtype, dropout_p):
    tracing('export')
    assert resolve('auto', device, dtype, dropout_p) == 'unrolled'


@pytest.mark.parametrize('name', ['reference', 'unrolled', 'tiles'])
def test_portable_backends_run_anywhere(name):
    for device, dtype, dropout_p in [('cpu', torch.float64, 0.1), ('cuda', torch.float16, 0.0),
                                     ('mps', torch.float32, 0.2)]:
        assert resolve(name, device, dtype, dropout_p) == name


@pytest.mark.parametrize('kwargs,error,match,can', [
    (dict(backend='native', device='cuda'), ValueError, 'CPU kernel and the inputs are on cuda',
     "'reference', 'unrolled', 'tiles'"),
    (dict(backend='native', dropout_p=0.1), ValueError, 'does not support dropout_p',
     "'reference', 'unrolled', 'tiles'"),
    (dict(backend='flex', dropout_p=0.1), ValueError, 'FlexAttention does not support dropout_p',
     "'reference', 'unrolled', 'tiles'"),
    (dict(backend='natten', rpb=torch.zeros(2, 5, 5)), ValueError, 'natten supports neither rpb',
     "'reference', 'unrolled', "),
    (dict(backend='triton', device='cpu'), ValueError, 'it runs on CUDA', "'reference', 'unrolled', "),
])
def test_impossible_request_names_the_alternatives(monkeypatch, kwargs, error, match, can):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    with pytest.raises(error, match=match) as info:
        resolve(**kwargs)
    message = str(info.value)
    assert message.startswith(f"backend={kwargs['backend']!r} cannot run this call")
    assert f'Backends that can: {can}' in message and 'backend="auto" picks' in message
    offered = message.split('Backends that can: ')[1].split(' (backend="auto"')[0].split(', ')
    assert repr(kwargs['backend']) not in offered and "'reference'" in offered


def test_native_without_kernel_is_a_runtime_error(no_kernel):
    with pytest.raises(RuntimeError, match=r"backend='native' cannot run this call: the compiled kernel is "
                                           r"unavailable .*Backends that can: 'reference', 'unrolled', 'tiles'.*"
                                           r"picks 'tiles'"):
        resolve('native')


@pytest.mark.skipif(natten_available(), reason='natten is installed')
def test_natten_not_installed_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="backend='natten' cannot run this call: the natten package is not "
                                           "installed.*'tiles'"):
        resolve('natten')


@pytest.mark.skipif(torch.cuda.is_available(), reason='triton may be able to run here')
def test_triton_without_gpu_is_a_runtime_error(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    with pytest.raises(RuntimeError, match="backend='triton' cannot run this call: .*Backends that can: "
                                           "'reference', 'unrolled', 'tiles'"):
        resolve('triton', 'cuda')


def test_named_backend_runs_that_implementation(monkeypatch):
    """No silent substitution: with the kernel gone, 'tiles' still runs tiles and 'native' refuses."""
    q, k, v, rpb = make_inputs((7, 7), (3, 3), rpb=True)
    expected = na2d(q, k, v, 3, rpb=rpb, backend='reference')
    torch.testing.assert_close(na2d(q, k, v, 3, rpb=rpb, backend='tiles'), expected)
    monkeypatch.setattr(native, 'library', lambda: None)
    torch.testing.assert_close(na2d(q, k, v, 3, rpb=rpb), expected)
    with pytest.raises(RuntimeError, match="backend='native'"):
        na2d(q, k, v, 3, rpb=rpb, backend='native')


def test_tiled_was_split_into_native_and_tiles():
    with pytest.raises(ValueError, match="'tiled' was split into 'native' .* or 'tiles'"):
        resolve('tiled')


def test_auto_under_jit_trace_is_unrolled():
    """``torch.jit.trace`` records plain ops (the custom CPU op cannot take traced sizes)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 9, 9, 2, 8) for _ in range(3))
    rpb = torch.randn(2, 5, 5)
    traced = torch.jit.trace(lambda a, b, c: na2d(a, b, c, 3, rpb=rpb), (q, k, v), check_trace=False)
    torch.testing.assert_close(traced(q, k, v), na2d(q, k, v, 3, rpb=rpb, backend='reference'))
