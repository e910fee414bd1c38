"""Tests of ``localattn.layers.NeighborhoodAttention2d`` (NAT/DiNAT attention layer)."""
from __future__ import annotations

import pytest
import torch

from localattn.layers import NeighborhoodAttention2d
from localattn.ops.na import na2d


def split_qkv(layer: NeighborhoodAttention2d, x: torch.Tensor):
    """q, k, v as ``[B, H, W, heads, head_dim]`` from the documented ``(q|k|v, head, dim)`` order."""
    b, h, w, c = x.shape
    qkv = x @ layer.qkv.weight.T + layer.qkv.bias
    return qkv.view(b, h, w, 3, layer.num_heads, c // layer.num_heads).unbind(3)


def dense_attention(q, k, v, allowed, bias):
    """Plain masked softmax attention over flattened pixels; ``allowed``/``bias``: ``[h?, N, N]``."""
    b, h, w, heads, c = q.shape
    qf, kf, vf = (t.reshape(b, h * w, heads, c).transpose(1, 2) for t in (q, k, v))
    logits = qf @ kf.transpose(-1, -2) * c ** -0.5 + bias
    attn = logits.masked_fill(~allowed, float('-inf')).softmax(-1)
    return (attn @ vf).transpose(1, 2).reshape(b, h, w, heads * c)


def test_parameter_names_and_shapes():
    layer = NeighborhoodAttention2d(64, 2, 7)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {'qkv.weight': (192, 64), 'qkv.bias': (192,), 'rpb': (2, 13, 13),
                      'proj.weight': (64, 64), 'proj.bias': (64,)}
    assert layer.attn_drop == 0.0 and isinstance(layer.proj_drop, torch.nn.Dropout)
    assert layer.rpb.std() < 0.05 and layer.rpb.abs().max() <= 2
    no_bias = NeighborhoodAttention2d(64, 2, 7, qkv_bias=False, rpb=False)
    assert no_bias.rpb is None and no_bias.qkv.bias is None
    assert 'kernel_size=(7, 7)' in repr(layer) and 'rpb=True' in repr(layer)


def test_forward_equals_qkv_na_proj():
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(32, 4, 3, dilation=2).double().eval()
    x = torch.randn(2, 9, 11, 32, dtype=torch.float64)
    q, k, v = split_qkv(layer, x)
    out = na2d(q, k, v, 3, dilation=2, rpb=layer.rpb, backend='reference').reshape(2, 9, 11, 32)
    torch.testing.assert_close(layer(x), layer.proj(out))


def allowed_keys(coord: torch.Tensor, length: int, kernel: int, dilation: int) -> torch.Tensor:
    """``[N, N]`` key mask along one axis. Short axis (padded): every real key of the query's group.
    Otherwise the NA window: ``kernel`` group members starting at ``clamp(li - k // 2, 0, Lg - k)``."""
    same_group = coord[None, :] % dilation == coord[:, None] % dilation
    if length < kernel * dilation:
        return same_group
    group_len = (length - coord % dilation + dilation - 1) // dilation  # per query
    start = torch.minimum((coord // dilation - kernel // 2).clamp(min=0), group_len - kernel)
    offset = coord[None, :] // dilation - start[:, None]
    return same_group & (offset >= 0) & (offset < kernel)


@pytest.mark.parametrize('size,kernel,dilation', [((3, 5), 7, 1), ((5, 4), 3, 2), ((4, 20), 3, 2),
                                                  ((3, 9), 5, 1), ((3, 10), 3, 5), ((7, 30), 7, 4),
                                                  ((13, 9), 5, 3), ((6, 9), 4, 2)])
def test_small_inputs_never_attend_padding(size, kernel, dilation):
    """A map smaller than ``kernel * dilation`` along an axis: each real query attends to every real
    key of its dilation group along that axis (the whole padded group is its window); RPB indexed by
    the offset in dilated steps."""
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(16, 2, kernel, dilation=dilation).double().eval()
    with torch.no_grad():
        layer.rpb.normal_()
    h, w = size
    x = torch.randn(2, h, w, 16, dtype=torch.float64)
    q, k, v = split_qkv(layer, x)
    ys, xs = (g.flatten() for g in torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij'))
    allowed = torch.ones(h * w, h * w, dtype=torch.bool)
    bias_idx = []
    for coord, length in ((ys, h), (xs, w)):
        diff = coord[None, :] - coord[:, None]  # key - query
        allowed &= allowed_keys(coord, length, kernel, dilation)
        bias_idx.append(torch.div(diff, dilation, rounding_mode='floor') + kernel - 1)
    bias = layer.rpb[:, bias_idx[0].clamp(0, 2 * kernel - 2), bias_idx[1].clamp(0, 2 * kernel - 2)]
    expected = layer.proj(dense_attention(q, k, v, allowed, bias))
    torch.testing.assert_close(layer(x), expected)


def test_small_input_gradients_are_finite():
    layer = NeighborhoodAttention2d(16, 2, 3, dilation=4)
    x = torch.randn(1, 5, 6, 16, requires_grad=True)  # width 6 < 12: group 2, 3 hold 1 real column
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_gradient_reaches_every_parameter():
    layer = NeighborhoodAttention2d(32, 2, 5, dilation=2)
    x = torch.randn(2, 12, 14, 32, requires_grad=True)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(16, 2, 3, attn_drop=0.5)
    x = torch.randn(1, 8, 8, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_backends_agree():
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(32, 2, 5).eval()
    x = torch.randn(2, 10, 13, 32)
    out = layer(x)
    layer.backend = 'reference'
    torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(embed_dim=30, num_heads=4, kernel_size=3), 'num_heads'),
    (dict(embed_dim=32, num_heads=4, kernel_size=3, backend='fast'), 'backend must be one of'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeighborhoodAttention2d(**kwargs)
