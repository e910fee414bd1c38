"""Tests of the QnA op (``localattn.ops.qna2d``), layer (``QnA2d``) and Flax converter.

Every reference below is an explicit per-window softmax written from the formula, independent of the
exp-space/convolution form under test:
``z_m(i) = sum_l sum_{o: j in image} w_lm(o) * softmax_o(s_lm(j) + b_lm(o)) * v_m(j)``,
``j = stride * i + o - (k - 1) // 2``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import localattn.ops.qna as qna_ops
from localattn.converters.qna_flax import convert_qna_layer
from localattn.layers import QnA2d
from localattn.ops import qna2d


@pytest.fixture(autouse=True)
def single_thread():
    """Every tensor here is tiny: one intra-op thread avoids OpenMP sync costs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def window_oracle(logits: torch.Tensor, value: torch.Tensor, rpb: torch.Tensor,
                  scale: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """fp64 loops over output pixels and window offsets; in-image keys only."""
    logits, value, rpb, scale = (t.detach().double() for t in (logits, value, rpb, scale))
    batch, height, width, num_queries, heads = logits.shape
    pad = (kernel_size - 1) // 2
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    out = torch.zeros(batch, out_h, out_w, heads, value.shape[-1], dtype=torch.float64)
    for i in range(out_h):
        for j in range(out_w):
            scores, values, weights = [], [], []
            for dy in range(kernel_size):
                for dx in range(kernel_size):
                    y, x = stride * i + dy - pad, stride * j + dx - pad
                    if 0 <= y < height and 0 <= x < width:
                        scores.append(logits[:, y, x] + rpb[:, :, dy, dx])   # [B, L, h]
                        values.append(value[:, y, x])                        # [B, h, d]
                        weights.append(scale[:, :, dy, dx])                  # [L, h]
            attn = torch.softmax(torch.stack(scores, -1), dim=-1)            # [B, L, h, n]
            attn = attn * torch.stack(weights, -1)
            out[:, i, j] = torch.einsum('blhn,bnhd->bhd', attn, torch.stack(values, 1))
    return out


def random_inputs(shape: tuple[int, int, int, int, int, int], kernel_size: int,
                  dtype: torch.dtype = torch.float64, logit_std: float = 2.0,
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``shape = (B, H, W, L, heads, head_dim)`` -> logits, value, rpb, scale_weights."""
    batch, height, width, num_queries, heads, head_dim = shape
    gen = torch.Generator().manual_seed(seed)
    table = (num_queries, heads, kernel_size, kernel_size)
    return (torch.randn(batch, height, width, num_queries, heads, generator=gen, dtype=dtype) * logit_std,
            torch.randn(batch, height, width, heads, head_dim, generator=gen, dtype=dtype),
            torch.randn(table, generator=gen, dtype=dtype),
            torch.randn(table, generator=gen, dtype=dtype))


# (H, W, kernel_size, stride, L)
ORACLE_CASES = [
    (1, 1, 1, 1, 1), (1, 1, 3, 1, 2), (1, 1, 5, 2, 2), (2, 3, 3, 1, 1), (2, 3, 5, 2, 2),
    (5, 4, 3, 1, 2), (5, 4, 7, 2, 1), (7, 9, 5, 1, 1), (7, 9, 7, 1, 2), (7, 9, 3, 2, 2),
    (6, 5, 1, 2, 2), (9, 6, 5, 2, 1), (3, 2, 15, 1, 2), (10, 11, 9, 2, 2),
]


@pytest.mark.parametrize('height,width,kernel_size,stride,num_queries', ORACLE_CASES)
def test_qna2d_matches_window_oracle(height, width, kernel_size, stride, num_queries):
    inputs = random_inputs((2, height, width, num_queries, 2, 3), kernel_size)
    expected = window_oracle(*inputs, kernel_size, stride)
    out = qna2d(*inputs, kernel_size=kernel_size, stride=stride)
    assert out.shape == expected.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    out32 = qna2d(*(t.float() for t in inputs), kernel_size=kernel_size, stride=stride)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected, rtol=1e-5, atol=1e-5)


# k <= 5 uses the native convolution backward, k = 7 the convolution-based weight gradient.
@pytest.mark.parametrize('shape,kernel_size,stride', [((1, 4, 5, 2, 2, 2), 3, 1),
                                                       ((2, 4, 5, 2, 2, 2), 3, 2),
                                                       ((1, 6, 5, 1, 2, 2), 5, 2),
                                                       ((1, 8, 7, 2, 1, 2), 7, 1),
                                                       ((1, 8, 7, 1, 2, 2), 7, 2)])
def test_qna2d_gradcheck(shape, kernel_size, stride):
    inputs = [t.requires_grad_() for t in random_inputs(shape, kernel_size)]
    assert torch.autograd.gradcheck(
        lambda *args: qna2d(*args, kernel_size=kernel_size, stride=stride), inputs)


@pytest.mark.parametrize('stride', [1, 2])
def test_qna2d_fp32_gradients_match_fp64(stride):
    """fp32 runs the channels-last CPU path; fp64 (checked by gradcheck above) the contiguous one."""
    inputs64 = [t.requires_grad_() for t in random_inputs((2, 8, 9, 2, 2, 3), 7)]
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    grad_out = torch.randn(2, math.ceil(8 / stride), math.ceil(9 / stride), 2, 3, dtype=torch.float64)
    qna2d(*inputs64, kernel_size=7, stride=stride).backward(grad_out)
    qna2d(*inputs32, kernel_size=7, stride=stride).backward(grad_out.float())
    for x32, x64 in zip(inputs32, inputs64):
        torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kernel_size,stride,size', [(3, 1, (6, 7)), (15, 1, (9, 8)),
                                                     (5, 2, (6, 8)), (15, 2, (7, 9))])
def test_depthwise_conv_gradients_match_native(kernel_size, stride, size):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *size, 6, generator=gen).permute(0, 3, 1, 2).requires_grad_()  # channels-last
    weight = torch.randn(6, 1, kernel_size, kernel_size, generator=gen, requires_grad=True)
    pad = (kernel_size - 1) // 2
    out = qna_ops._DepthwiseConv2d.apply(x, weight, stride, pad)
    expected = torch.nn.functional.conv2d(x, weight, stride=stride, padding=pad, groups=6)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn(expected.shape, generator=gen)
    grads = torch.autograd.grad(out, (x, weight), grad_out)
    expected_grads = torch.autograd.grad(expected, (x, weight), grad_out)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_qna2d_gradcheck_through_fallback():
    logits, value, rpb, scale = random_inputs((1, 4, 5, 2, 1, 2), 3)
    logits = logits.clone()
    logits[:, :, 3:] -= 200.0   # columns 3-4 underflow against the global max
    inputs = [t.requires_grad_() for t in (logits, value, rpb, scale)]
    assert torch.autograd.gradcheck(lambda *args: qna2d(*args, kernel_size=3), inputs)


@pytest.mark.parametrize('stride,shift', [(1, 1), (1, 3), (2, 2), (2, 4)])
def test_qna2d_shift_equivariance(stride, shift):
    kernel_size, pad = 5, 2
    inputs = random_inputs((1, 14, 16, 2, 2, 3), kernel_size)
    base = qna2d(*inputs, kernel_size=kernel_size, stride=stride)
    shifted_inputs = [torch.roll(t, shifts=(shift, shift), dims=(1, 2)) for t in inputs[:2]]
    shifted = qna2d(*shifted_inputs, *inputs[2:], kernel_size=kernel_size, stride=stride)
    out_shift = shift // stride
    # Interior outputs: every window lies inside the image before and after the (cyclic) shift.
    lo = math.ceil((pad + shift) / stride)
    hi_y, hi_x = (14 - 1 - pad) // stride + 1, (16 - 1 - pad) // stride + 1
    torch.testing.assert_close(shifted[:, lo:hi_y, lo:hi_x],
                               base[:, lo - out_shift:hi_y - out_shift, lo - out_shift:hi_x - out_shift],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('stride', [1, 2])
def test_qna2d_locality_is_exact(stride):
    kernel_size, pad = 3, 1
    logits, value, rpb, scale = random_inputs((1, 9, 9, 2, 2, 3), kernel_size, dtype=torch.float32)
    logits[0, 0, 0] = 10.0   # the global maximum sits at (0, 0): the perturbation cannot move it
    base = qna2d(logits, value, rpb, scale, kernel_size=kernel_size, stride=stride)
    y, x = 8, 8
    logits2, value2 = logits.clone(), value.clone()
    logits2[0, y, x] = logits[0, y, x] - 1.5
    value2[0, y, x] = value[0, y, x] * 3.0 + 1.0
    changed = qna2d(logits2, value2, rpb, scale, kernel_size=kernel_size, stride=stride)
    rows = torch.arange(base.shape[1])[:, None] * stride
    cols = torch.arange(base.shape[2])[None, :] * stride
    sees = ((rows - y).abs() <= pad) & ((cols - x).abs() <= pad)   # [H', W']
    assert torch.equal(changed[0][~sees], base[0][~sees])
    assert not torch.allclose(changed[0][sees], base[0][sees])


def test_qna2d_fallback_far_region_matches_oracle(monkeypatch):
    calls = []
    window_softmax = qna_ops._window_softmax

    def spy(*args, **kwargs):
        out = window_softmax(*args, **kwargs)
        calls.append(out.shape[0])
        return out

    monkeypatch.setattr(qna_ops, '_window_softmax', spy)
    logits, value, rpb, scale = random_inputs((2, 8, 10, 2, 2, 4), 3, dtype=torch.float32)
    logits[:, :, 5:] -= 200.0   # exp(-200) underflows fp32: the plain form would give 0 / 0 there
    out = qna2d(logits, value, rpb, scale, kernel_size=3)
    assert calls and calls[0] > 0
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), window_oracle(logits, value, rpb, scale, 3, 1),
                               rtol=1e-5, atol=1e-5)


def test_qna2d_fallback_for_negative_bias():
    """Windows far below the global maximum whose bias is -120 everywhere but their top row."""
    logits, value, rpb, scale = random_inputs((1, 6, 7, 1, 2, 3), 3, dtype=torch.float32)
    rpb = torch.zeros_like(rpb)
    rpb[:, :, 1:, :] = -120.0   # only the top row of the window keeps a zero bias
    logits[:, 3:] -= 90.0        # rows 3-5 lie far below the global maximum at rows 0-2
    out = qna2d(logits, value, rpb, scale, kernel_size=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), window_oracle(logits, value, rpb, scale, 3, 1),
                               rtol=1e-5, atol=1e-5)


def _layer_loss(layer: QnA2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = layer(x)
    out.float().square().mean().backward()
    return out, x.grad


@pytest.mark.parametrize('scale', [1.0, 100.0])
@pytest.mark.parametrize('mode', ['fp32', 'bf16-autocast', 'fp16-autocast', 'fp16'])
def test_layer_finite_in_low_precision_and_large_inputs(mode, scale):
    torch.manual_seed(0)
    layer = QnA2d(16, 32, 4, kernel_size=7, stride=2)   # k > 5: the convolution-based weight gradient
    x = torch.randn(2, 11, 9, 16) * scale
    dtype = {'fp32': torch.float32, 'bf16-autocast': torch.bfloat16,
             'fp16-autocast': torch.float16, 'fp16': torch.float16}[mode]
    if mode == 'fp16':
        layer, x = layer.half(), x.half()
    x.requires_grad_()
    with torch.autocast('cpu', dtype=dtype, enabled=mode.endswith('autocast')):
        out, grad = _layer_loss(layer, x)
    assert out.shape == (2, 6, 5, 32) and out.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_qna2d_half_inputs_return_half():
    inputs = random_inputs((1, 5, 6, 2, 2, 4), 3, dtype=torch.float32, logit_std=100.0)
    expected = window_oracle(*inputs, 3, 1)
    for dtype in (torch.float16, torch.bfloat16):
        out = qna2d(inputs[0].to(dtype), inputs[1].to(dtype), *inputs[2:], kernel_size=3)
        assert out.dtype == dtype and torch.isfinite(out).all()
    out = qna2d(*inputs, kernel_size=3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('height,width', [(1, 1), (2, 3), (5, 4), (3, 17), (15, 1)])
@pytest.mark.parametrize('kernel_size,stride', [(1, 1), (3, 2), (7, 1), (15, 2)])
def test_layer_shapes_any_size(height, width, kernel_size, stride):
    layer = QnA2d(8, 16, 2, kernel_size=kernel_size, stride=stride)
    out = layer(torch.randn(1, height, width, 8))
    assert out.shape == (1, math.ceil(height / stride), math.ceil(width / stride), 16)
    assert torch.isfinite(out).all()


def test_layer_parameters_and_repr():
    layer = QnA2d(32, 64, 4, kernel_size=7, stride=2, num_queries=2)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {'query': (2, 64), 'key.weight': (64, 32), 'value.weight': (64, 32),
                      'rpb': (2, 4, 7, 7), 'attn_scale': (2, 4, 7, 7), 'proj.weight': (64, 64)}
    assert torch.equal(layer.rpb, torch.zeros_like(layer.rpb))
    assert 0.01 < layer.attn_scale.std().item() < 0.03
    assert repr(layer).splitlines()[1].strip() == ('in_channels=32, out_channels=64, num_heads=4, '
                                           'kernel_size=7, stride=2, num_queries=2')


def test_layer_logits_are_the_folded_query_key_product():
    """One projection ``x @ (W_k q_hat)`` equals per-pixel keys dotted with the normalised query."""
    torch.manual_seed(0)
    layer = QnA2d(6, 8, 2, num_queries=3, qkv_bias=True).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    keys = layer.key(x).view(2, 3, 4, 1, 2, 4)
    query = layer.query.view(3, 2, 4)
    query = query / query.norm(dim=-1, keepdim=True) / 2.0
    expected = (keys * query).sum(-1)
    logits = torch.nn.functional.linear(x, *layer.logit_projection()).view(2, 3, 4, 3, 2)
    torch.testing.assert_close(logits, expected)


def test_qna2d_errors():
    logits, value, rpb, scale = random_inputs((1, 4, 4, 2, 2, 3), 3)
    with pytest.raises(ValueError, match='kernel_size'):
        qna2d(logits, value, rpb, scale, kernel_size=4)
    with pytest.raises(ValueError, match='stride'):
        qna2d(logits, value, rpb, scale, kernel_size=3, stride=0)
    with pytest.raises(ValueError, match='logits'):
        qna2d(logits[0], value, rpb, scale, kernel_size=3)
    with pytest.raises(ValueError, match='value'):
        qna2d(logits, value[:, :, :3], rpb, scale, kernel_size=3)
    with pytest.raises(ValueError, match='rpb'):
        qna2d(logits, value, rpb[:1], scale, kernel_size=3)
    with pytest.raises(ValueError, match='scale_weights'):
        qna2d(logits, value, rpb, scale[:, :, :2], kernel_size=3)


def test_layer_errors():
    with pytest.raises(ValueError, match='divisible by num_heads'):
        QnA2d(8, 10, 4)
    with pytest.raises(ValueError, match='kernel_size'):
        QnA2d(8, 8, 2, kernel_size=4)
    with pytest.raises(ValueError, match='stride must be 1 or 2'):
        QnA2d(8, 8, 2, stride=3)
    with pytest.raises(ValueError, match='num_queries'):
        QnA2d(8, 8, 2, num_queries=0)
    with pytest.raises(ValueError, match='channels-last'):
        QnA2d(8, 8, 2)(torch.randn(1, 8, 4, 4))


# ----------------------------------------------------------------------------------------------
# Flax converter: the reference is evaluated directly on the Flax-layout arrays, indexed as flax does.

def flax_layer_params(in_channels: int, out_channels: int, num_heads: int, kernel_size: int,
                      num_queries: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lh, kk = num_queries * num_heads, kernel_size * kernel_size
    return {
        'query': rng.standard_normal((num_queries, out_channels)),
        'Wk': rng.standard_normal((in_channels, out_channels)) / math.sqrt(in_channels),
        'to_v/kernel': rng.standard_normal((in_channels, out_channels)) / math.sqrt(in_channels),
        'to_out/kernel': rng.standard_normal((out_channels, out_channels)) / math.sqrt(out_channels),
        'rpe_bias': rng.standard_normal((kk, lh)),
        'attn_scale_weights': rng.standard_normal((1, 1, kk, lh)),
    }


def flax_formula(params: dict[str, np.ndarray], x: np.ndarray, num_heads: int, kernel_size: int,
                 stride: int) -> np.ndarray:
    """fp64 numpy: Dense kernels (in, out), k*k row-major over (dy, dx), L*h ordered (query, head)."""
    batch, height, width, _ = x.shape
    num_queries, out_channels = params['query'].shape
    head_dim, pad = out_channels // num_heads, (kernel_size - 1) // 2
    keys = (x @ params['Wk']).reshape(batch, height, width, num_heads, head_dim)
    values = (x @ params['to_v/kernel']).reshape(batch, height, width, num_heads, head_dim)
    query = params['query'].reshape(num_queries, num_heads, head_dim)
    query = query / np.linalg.norm(query, axis=-1, keepdims=True) / math.sqrt(head_dim)
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    z = np.zeros((batch, out_h, out_w, num_heads, head_dim))
    for i in range(out_h):
        for j in range(out_w):
            for q in range(num_queries):
                for m in range(num_heads):
                    scores, vals, weights = [], [], []
                    for dy in range(kernel_size):
                        for dx in range(kernel_size):
                            y, x_ = stride * i + dy - pad, stride * j + dx - pad
                            if 0 <= y < height and 0 <= x_ < width:
                                col, row = q * num_heads + m, dy * kernel_size + dx
                                scores.append(keys[:, y, x_, m] @ query[q, m] + params['rpe_bias'][row, col])
                                vals.append(values[:, y, x_, m])
                                weights.append(params['attn_scale_weights'][0, 0, row, col])
                    scores = np.stack(scores, 1)
                    attn = np.exp(scores - scores.max(1, keepdims=True))
                    attn = attn / attn.sum(1, keepdims=True) * np.array(weights)
                    z[:, i, j, m] += np.einsum('bn,bnd->bd', attn, np.stack(vals, 1))
    return z.reshape(batch, out_h, out_w, out_channels) @ params['to_out/kernel']


@pytest.mark.parametrize('in_channels,out_channels,num_heads,kernel_size,stride,num_queries',
                         [(8, 8, 2, 3, 1, 2), (6, 12, 4, 5, 2, 2), (8, 8, 2, 3, 1, 1)])
def test_convert_flax_layer_matches_flax_formula(in_channels, out_channels, num_heads, kernel_size,
                                                 stride, num_queries):
    params = flax_layer_params(in_channels, out_channels, num_heads, kernel_size, num_queries)
    layer = QnA2d(in_channels, out_channels, num_heads, kernel_size=kernel_size, stride=stride,
                  num_queries=num_queries).double()
    layer.load_state_dict(convert_qna_layer(params, num_heads), strict=True)
    x = np.random.default_rng(1).standard_normal((2, 7, 6, in_channels))
    out = layer(torch.from_numpy(x)).detach().numpy()
    expected = flax_formula(params, x, num_heads, kernel_size, stride)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)   # converted weights are fp32


def test_convert_flax_layer_nested_prefix_and_errors():
    params = flax_layer_params(8, 8, 2, 3, 2)
    tree = {'QnA_Block_1': {'FusedKQnA_0': {**{k: v for k, v in params.items() if '/' not in k},
                                            'to_v': {'kernel': params['to_v/kernel']},
                                            'to_out': {'kernel': params['to_out/kernel']}}}}
    nested = convert_qna_layer(tree, 2, prefix='QnA_Block_1/FusedKQnA_0')
    flat = convert_qna_layer(params, 2)
    assert all(torch.equal(nested[name], flat[name]) for name in flat)
    with pytest.raises(ValueError, match='missing'):
        convert_qna_layer({k: v for k, v in params.items() if k != 'Wk'}, 2)
    with pytest.raises(ValueError, match='rpe_bias'):
        convert_qna_layer({**params, 'rpe_bias': params['rpe_bias'][:5]}, 2)
    with pytest.raises(ValueError, match='divisible by num_heads'):
        convert_qna_layer(params, 3)
