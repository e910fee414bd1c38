"""Tests for the QnA-ViT backbone, its Flax converter and the msgpack conversion tool.

The converter is checked against an independent fp64 forward of the OFFICIAL parameter layout
(written here from the reference facts, directly on the flat Flax arrays) on a synthetic tree.
"""
import importlib.util
import math
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn

import localattn  # noqa: F401  (registers QnAViT)
from localattn.backbones import QnAViT
from localattn.backbones.qnavit import ARCH_SETTINGS, NO_DECAY_KEYS
from localattn.converters.qnavit_flax import convert_qnavit_flax, infer_qnavit_arch
from localattn.layers import QnA2d, WindowSelfAttention
from localattn.layers.window_attention import window_merge, window_partition

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'model_converters', 'qnavit_flax_to_mmpretrain.py')

# A tiny arch with MSA in three stages: at 32x32 input the maps are 8, 4, 2, 1 and stage 0 holds
# four 4x4 windows; stages 2 and 3 are covered by one window.
TINY = dict(embed_dims=8, qna_depths=(1, 1, 1, 0), msa_depths=(1, 0, 1, 1), qna_heads=(2, 2, 2, 2),
            msa_heads=(2, 2, 2, 2), window_sizes=(4, 4, 2, 1), qna_kernel_size=3)
PAPER = {'tiny': (16, 2.5), 'tiny-7x7': (16, 2.6), 'small': (25, 4.4), 'base': (56, 9.7)}


def _tiny(**kwargs):
    kwargs.setdefault('arch', TINY)
    model = QnAViT(**kwargs)
    model.init_weights()
    return model


# ------------------------------------------------------------------------------------------
# Official Flax layout: shapes, a synthetic tree and an independent fp64 forward
# ------------------------------------------------------------------------------------------
def flax_shapes(arch, num_classes, in_channels=3):
    """``{flat name: shape}`` of the official QnA-ViT tree (reference, section 3)."""
    arch = {**dict(qna_kernel_size=3, num_queries=2, mlp_ratio=4), **arch}
    k, nq, r = arch['qna_kernel_size'], arch['num_queries'], arch['mlp_ratio']
    shapes = {'StemBlock_0/conv_1x1/kernel': (4, 4, in_channels, arch['embed_dims'])}

    def block(prefix, cin, cout):
        shapes[f'{prefix}/LayerNorm_0/scale'] = shapes[f'{prefix}/LayerNorm_0/bias'] = (cin, )
        shapes[f'{prefix}/LayerNorm_1/scale'] = shapes[f'{prefix}/LayerNorm_1/bias'] = (cout, )
        shapes[f'{prefix}/MlpBlock_0/Dense_0/kernel'] = (cout, r * cout)
        shapes[f'{prefix}/MlpBlock_0/Dense_0/bias'] = (r * cout, )
        shapes[f'{prefix}/MlpBlock_0/Dense_1/kernel'] = (r * cout, cout)
        shapes[f'{prefix}/MlpBlock_0/Dense_1/bias'] = (cout, )

    def qna(prefix, cin, cout, heads):
        block(prefix, cin, cout)
        layer = f'{prefix}/FusedKQnA_0'
        shapes.update({f'{layer}/query': (nq, cout), f'{layer}/Wk': (cin, cout),
                       f'{layer}/to_v/kernel': (cin, cout), f'{layer}/to_out/kernel': (cout, cout),
                       f'{layer}/rpe_bias': (k * k, nq * heads),
                       f'{layer}/attn_scale_weights': (1, 1, k * k, nq * heads)})

    num_stages = len(arch['qna_depths'])
    for s in range(num_stages):
        dims = arch['embed_dims'] * 2**s
        for i in range(arch['msa_depths'][s]):
            prefix = f'LSAStage_{s}/MSA_Block_{i + 1}'
            block(prefix, dims, dims)
            attn = f'{prefix}/MultiHeadSelfAttention_0'
            w, h = arch['window_sizes'][s], arch['msa_heads'][s]
            shapes[f'{attn}/to_qkv/kernel'] = (dims, 3 * dims)
            shapes[f'{attn}/to_out/kernel'] = (dims, dims)
            shapes[f'{attn}/RelativePositionalEmbedding_0/rpe_bias'] = ((2 * w - 1)**2, h)
        depth = arch['qna_depths'][s]
        for i in range(depth):
            qna(f'QnAStage_{s}/QnA_Block_{i + 1}', dims, dims, arch['qna_heads'][s])
        if s < num_stages - 1:
            prefix = f'QnAStage_{s}/QnA_Block_{depth + 1}_stride_2'
            qna(prefix, dims, 2 * dims, 2 * arch['qna_heads'][s])
            shapes[f'{prefix}/Conv_0/kernel'] = (1, 1, dims, 2 * dims)
    last = arch['embed_dims'] * 2**(num_stages - 1)
    shapes['ClassificationHead_0/LayerNorm_0/scale'] = (last, )
    shapes['ClassificationHead_0/LayerNorm_0/bias'] = (last, )
    shapes['ClassificationHead_0/head_logits/kernel'] = (last, num_classes)
    shapes['ClassificationHead_0/head_logits/bias'] = (num_classes, )
    return shapes


def synthetic_tree(arch, num_classes, seed=0):
    """Nested Flax-style dict of random float32 arrays with the official names and shapes."""
    rng = np.random.default_rng(seed)
    tree = {}
    for name, shape in flax_shapes(arch, num_classes).items():
        leaf = name.rsplit('/', 1)[1]
        if leaf == 'scale':
            value = 1 + 0.2 * rng.standard_normal(shape)
        elif leaf in ('bias', 'rpe_bias', 'attn_scale_weights'):
            value = 0.5 * rng.standard_normal(shape)
        elif leaf == 'query':
            value = rng.standard_normal(shape)
        else:  # kernels: (..., in, out)
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) / math.sqrt(fan_in)
        node = tree
        parts = name.split('/')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value.astype(np.float32)
    return tree


def _flat(tree, prefix=''):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f'{prefix}{key}/'))
        else:
            out[f'{prefix}{key}'] = np.asarray(value, dtype=np.float64)
    return out


def _ln(x, p, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean)**2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p[f'{prefix}/scale'] + p[f'{prefix}/bias']


def _mlp(x, p, prefix):
    h = x @ p[f'{prefix}/Dense_0/kernel'] + p[f'{prefix}/Dense_0/bias']
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # flax nn.gelu
    return h @ p[f'{prefix}/Dense_1/kernel'] + p[f'{prefix}/Dense_1/bias']


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def ref_qna(x, p, prefix, heads, stride):
    """Per-window QnA of the Flax layer: explicit masked softmax over every k x k window."""
    query = p[f'{prefix}/query']
    nq, cout = query.shape
    d = cout // heads
    q = query.reshape(nq, heads, d)
    q = q / (np.linalg.norm(q, axis=-1, keepdims=True) + 1e-6) / math.sqrt(d)
    wk = p[f'{prefix}/Wk'].reshape(-1, heads, d)
    logits = np.einsum('bhwc,cmd,lmd->bhwlm', x, wk, q)                 # per key pixel
    v = (x @ p[f'{prefix}/to_v/kernel']).reshape(*x.shape[:3], heads, d)
    kk = p[f'{prefix}/rpe_bias'].shape[0]
    k = math.isqrt(kk)
    rpe = p[f'{prefix}/rpe_bias'].reshape(k, k, nq, heads)              # (offset, (query, head))
    scale = p[f'{prefix}/attn_scale_weights'][0, 0].reshape(k, k, nq, heads)
    b, H, W, _ = x.shape
    pad = (k - 1) // 2
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    out = np.zeros((b, Ho, Wo, heads, d))
    for i in range(Ho):
        for j in range(Wo):
            scores, values, weights = [], [], []
            for dy in range(k):
                for dx in range(k):
                    y, xx = stride * i + dy - pad, stride * j + dx - pad
                    if 0 <= y < H and 0 <= xx < W:
                        scores.append(logits[:, y, xx] + rpe[dy, dx])   # (b, L, h)
                        values.append(v[:, y, xx])                      # (b, h, d)
                        weights.append(np.broadcast_to(scale[dy, dx], (b, nq, heads)))
            attn = _softmax(np.stack(scores, -1), -1)                   # (b, L, h, n)
            attn = attn * np.stack(weights, -1)
            out[:, i, j] = np.einsum('blmn,nbmd->bmd', attn, np.stack(values, 0))
    return out.reshape(b, Ho, Wo, cout) @ p[f'{prefix}/to_out/kernel']


def ref_msa(x, p, prefix, heads, window):
    """Official LSA: exact window partition, (head, q|k|v, dim) split, Swin-index bias."""
    b, H, W, C = x.shape
    assert H % window == 0 and W % window == 0
    n = window * window
    win = x.reshape(b, H // window, window, W // window, window, C).transpose(0, 1, 3, 2, 4, 5)
    win = win.reshape(-1, n, C)
    d = C // heads
    qkv = (win @ p[f'{prefix}/to_qkv/kernel']).reshape(-1, n, heads, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    table = p[f'{prefix}/RelativePositionalEmbedding_0/rpe_bias']
    coords = [(y, xx) for y in range(window) for xx in range(window)]
    bias = np.zeros((heads, n, n))
    for a, (ya, xa) in enumerate(coords):
        for c, (yc, xc) in enumerate(coords):
            index = (ya - yc + window - 1) * (2 * window - 1) + (xa - xc + window - 1)
            bias[:, a, c] = table[index]
    logits = np.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(d) + bias
    out = np.einsum('bhqk,bkhd->bqhd', _softmax(logits, -1), v).reshape(-1, n, C)
    out = out @ p[f'{prefix}/to_out/kernel']
    out = out.reshape(b, H // window, W // window, window, window, C).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, H, W, C)


def ref_forward(p, arch, images):
    """fp64 forward of the official QnA-ViT layout on NHWC ``images`` (H, W multiples of 4)."""
    b, H, W, cin = images.shape
    stem = p['StemBlock_0/conv_1x1/kernel']
    x = images.reshape(b, H // 4, 4, W // 4, 4, cin)
    x = np.einsum('bhiwjc,ijcd->bhwd', x, stem)
    num_stages = len(arch['qna_depths'])
    for s in range(num_stages):
        for i in range(arch['msa_depths'][s]):
            pre = f'LSAStage_{s}/MSA_Block_{i + 1}'
            x = x + ref_msa(_ln(x, p, f'{pre}/LayerNorm_0'), p, f'{pre}/MultiHeadSelfAttention_0',
                            arch['msa_heads'][s], arch['window_sizes'][s])
            x = x + _mlp(_ln(x, p, f'{pre}/LayerNorm_1'), p, f'{pre}/MlpBlock_0')
        depth = arch['qna_depths'][s]
        blocks = [(f'QnAStage_{s}/QnA_Block_{i + 1}', 1) for i in range(depth)]
        if s < num_stages - 1:
            blocks.append((f'QnAStage_{s}/QnA_Block_{depth + 1}_stride_2', 2))
        for pre, stride in blocks:
            skip = x if stride == 1 else x[:, ::2, ::2] @ p[f'{pre}/Conv_0/kernel'][0, 0]
            x = skip + ref_qna(_ln(x, p, f'{pre}/LayerNorm_0'), p, f'{pre}/FusedKQnA_0',
                               arch['qna_heads'][s] * stride, stride)
            x = x + _mlp(_ln(x, p, f'{pre}/LayerNorm_1'), p, f'{pre}/MlpBlock_0')
    x = _ln(x, p, 'ClassificationHead_0/LayerNorm_0').mean(axis=(1, 2))
    head = 'ClassificationHead_0/head_logits'
    return x @ p[f'{head}/kernel'] + p[f'{head}/bias']


def _classifier(arch, num_classes):
    from mmpretrain.registry import MODELS
    in_channels = arch['embed_dims'] * 2**(len(arch['qna_depths']) - 1)
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='QnAViT', arch=arch, out_indices=(len(arch['qna_depths']) - 1, ),
                      drop_path_rate=0.),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=in_channels,
                  loss=dict(type='CrossEntropyLoss'))))


# ------------------------------------------------------------------------------------------
# Architecture: parameters and FLOPs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(ARCH_SETTINGS))
def test_param_count_matches_official_tree(name):
    model = QnAViT(arch=name, out_indices=(3, ))
    dims = model.num_features[-1]
    ours = sum(p.numel() for p in model.parameters()) + dims * 1000 + 1000
    official = sum(int(np.prod(s)) for s in flax_shapes(ARCH_SETTINGS[name], 1000).values())
    assert ours == official
    assert round(ours / 1e6) == PAPER[name][0]
    if name == 'tiny':
        assert ours == 15_715_560


def test_classifier_param_count_tiny():
    model = _classifier(ARCH_SETTINGS['tiny'], 1000)
    assert sum(p.numel() for p in model.parameters()) == 15_715_560


def _flops(model, shape):
    try:
        from localattn.analysis.complexity import count_flops_params
    except ImportError:
        from mmengine.analysis import get_model_complexity_info
        return get_model_complexity_info(model, input_shape=shape, show_table=False,
                                         show_arch=False)['flops']
    return count_flops_params(model, input_shape=shape)['flops']


def test_flops_tiny_224():
    model = _classifier(ARCH_SETTINGS['tiny'], 1000).eval()
    flops = _flops(model, (3, 224, 224))
    assert abs(flops / 2.5e9 - 1) < 0.05, flops


# ------------------------------------------------------------------------------------------
# Shapes, freezing, checkpointing, registries
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('hw', [(224, 224), (511, 383), (64, 64), (5, 3)])
def test_output_shapes(hw):
    # windows 3 and 2 do not divide these maps: the MSA stages pad and mask
    model = _tiny(arch=dict(TINY, window_sizes=(3, 4, 3, 2))).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    h, w = math.ceil(hw[0] / 4), math.ceil(hw[1] / 4)
    assert len(outs) == 4
    for i, out in enumerate(outs):
        assert out.shape == (1, 8 * 2**i, h, w)
        assert torch.isfinite(out).all()
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_out_indices_and_released_arch_small_input():
    model = QnAViT(arch='tiny', out_indices=(-1, 1)).eval()
    assert model.out_indices == (1, 3) and model.num_features == [64, 128, 256, 512]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 48))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 6), (1, 512, 2, 2)]


def test_frozen_stages():
    model = _tiny(frozen_stages=2)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.norm0, model.norm1]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in (model.stages[2], model.stages[3], model.norm2, model.norm3):
        assert all(p.requires_grad for p in module.parameters())
        assert module.training


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    ref = _tiny(drop_path_rate=0.)
    cp_model = _tiny(drop_path_rate=0., with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 40, 36)
    outs = []
    for model in (ref, cp_model):
        model.train()
        out = model(x)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in out).backward()
        outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    for a, b in zip(outs[0][0], outs[1][0]):
        torch.testing.assert_close(a, b)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], msg=name)


@pytest.mark.parametrize('package', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_registries(package):
    registry = importlib.import_module(f'{package}.registry').MODELS
    model = registry.build(dict(type='QnAViT', arch=TINY, out_indices=(1, 2)))
    assert isinstance(model, QnAViT)
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [16, 32]


def test_gradients_reach_every_parameter():
    arch = dict(TINY, window_sizes=(4, 4, 2, 2))
    model = _tiny(arch=arch, drop_path_rate=0.)
    for module in model.modules():  # non-zero tables so that every gradient path is exercised
        if isinstance(module, WindowSelfAttention):
            nn.init.normal_(module.relative_position_bias_table, std=0.5)
    outs = model(torch.randn(2, 3, 64, 64))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_argument_validation():
    with pytest.raises(ValueError, match='unknown arch'):
        QnAViT(arch='huge')
    with pytest.raises(ValueError, match='missing keys'):
        QnAViT(arch=dict(embed_dims=8))
    with pytest.raises(ValueError, match='one entry per stage'):
        QnAViT(arch=dict(TINY, msa_heads=(2, 2)))
    with pytest.raises(ValueError, match='divisible by qna_heads'):
        QnAViT(arch=dict(TINY, qna_heads=(3, 2, 2, 2)))
    with pytest.raises(ValueError, match='divisible by msa_heads'):
        QnAViT(arch=dict(TINY, msa_heads=(3, 2, 2, 2)))
    with pytest.raises(ValueError, match='odd'):
        QnAViT(arch=dict(TINY, qna_kernel_size=4))
    with pytest.raises(ValueError, match='out_indices'):
        QnAViT(arch=TINY, out_indices=(4, ))
    with pytest.raises(ValueError, match='frozen_stages'):
        QnAViT(arch=TINY, frozen_stages=5)
    with pytest.raises(ValueError, match='drop_path_rate'):
        QnAViT(arch=TINY, drop_path_rate=1.5)
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        QnAViT(arch=TINY)(torch.randn(3, 32, 32))


# ------------------------------------------------------------------------------------------
# Window self-attention policy
# ------------------------------------------------------------------------------------------
def _naive_window_attention(attn, x, window):
    """Truncated border windows, no padding at all: the reference for pad + mask."""
    b, H, W, C = x.shape
    h, d = attn.num_heads, attn.head_dims
    out = torch.zeros_like(x)
    table = attn.relative_position_bias_table
    for y0 in range(0, H, window):
        for x0 in range(0, W, window):
            ys, xs = range(y0, min(y0 + window, H)), range(x0, min(x0 + window, W))
            coords = [(y, xx) for y in ys for xx in xs]
            tokens = torch.stack([x[:, y, xx] for y, xx in coords], 1)            # [b, n, C]
            q, k, v = attn.qkv(tokens).view(b, len(coords), 3, h, d).permute(2, 0, 3, 1, 4)
            bias = torch.stack([torch.stack([
                table[(ya - yc + window - 1) * (2 * window - 1) + (xa - xc + window - 1)]
                for (yc, xc) in coords]) for (ya, xa) in coords]).permute(2, 0, 1)
            logits = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
            res = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, len(coords), C))
            for n, (y, xx) in enumerate(coords):
                out[:, y, xx] = res[:, n]
    return out


@pytest.mark.parametrize('hw,window', [((5, 7), 3), ((6, 6), 3), ((2, 3), 7)])
def test_window_attention_pad_and_mask(hw, window):
    torch.manual_seed(0)
    attn = WindowSelfAttention(8, 2, window).double()
    nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    windows, layout, key_mask = window_partition(x, window)
    padded = hw[0] % min(window, hw[0]) or hw[1] % min(window, hw[1])
    assert (key_mask is None) == (not padded)
    ours = window_merge(attn(windows, layout[2:4], key_mask), layout)
    torch.testing.assert_close(ours, _naive_window_attention(attn, x, window))


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('wrap', ['backbone', 'module'])
def test_pretrained_round_trip(tmp_path, wrap):
    source = _tiny()
    prefix = 'backbone.' if wrap == 'backbone' else 'module.'
    state = {prefix + k: v for k, v in source.state_dict().items()}
    if wrap == 'backbone':
        state['head.fc.weight'] = torch.zeros(3, 64)  # outside the backbone prefix: ignored
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'state_dict': state, 'meta': {}}, path)
    target = QnAViT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    target.init_weights()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], value, msg=name)
    report = target.load_pretrained(path)
    assert report.clean and report.resized == [] and len(report.loaded) == len(state) - (wrap == 'backbone')
    assert report.ignored == (['head.fc.weight'] if wrap == 'backbone' else [])


def test_pretrained_resize_and_report(tmp_path):
    source = _tiny()
    state = source.state_dict()
    state['extra.weight'] = torch.zeros(1)
    del state['norm3.weight']
    qna_key = 'stages.0.qna_blocks.0.attn.rpb'
    state[qna_key] = torch.zeros(2, 2, 5, 5)  # kernel mismatch: skipped, reported
    target = QnAViT(arch=dict(TINY, window_sizes=(3, 4, 2, 1)))
    report = target.load_pretrained({'state_dict': state})
    assert report.resized == ['stages.0.msa_blocks.0.attn.relative_position_bias_table: (49, 2) -> (25, 2)']
    assert target.stages[0].msa_blocks[0].attn.relative_position_bias_table.shape == (25, 2)
    assert report.unexpected == ['extra.weight']
    assert set(report.missing) == {'norm3.weight', qna_key}
    assert report.skipped == [f'{qna_key}: checkpoint (2, 2, 5, 5) vs model (2, 2, 3, 3)']


# ------------------------------------------------------------------------------------------
# Weight-decay groups
# ------------------------------------------------------------------------------------------
def test_no_decay_custom_keys_select_exactly_the_intended_params():
    from mmengine.optim import DefaultOptimWrapperConstructor
    model = _classifier(TINY, 10)
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(custom_keys={key: dict(decay_mult=0.) for key in NO_DECAY_KEYS}))
    optimizer = constructor(model).optimizer
    no_decay = {id(p) for group in optimizer.param_groups if group['weight_decay'] == 0
                for p in group['params']}
    expected = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            expected.update(id(p) for p in module.parameters())
        elif isinstance(module, WindowSelfAttention):
            expected.add(id(module.relative_position_bias_table))
        elif isinstance(module, QnA2d):
            expected.update({id(module.rpb), id(module.attn_scale), id(module.query)})
    assert no_decay == expected
    assert len(no_decay) < len(list(model.parameters()))


# ------------------------------------------------------------------------------------------
# Flax converter
# ------------------------------------------------------------------------------------------
def test_converter_reproduces_official_layout():
    tree = synthetic_tree(TINY, num_classes=5, seed=1)
    state, arch = convert_qnavit_flax(tree)
    assert arch['num_classes'] == 5 and arch['qna_depths'] == TINY['qna_depths']
    for s, depth in enumerate(TINY['msa_depths']):  # windows/heads only exist where MSA does
        if depth:
            assert arch['window_sizes'][s] == TINY['window_sizes'][s]
            assert arch['msa_heads'][s] == TINY['msa_heads'][s]
    model = _classifier(TINY, 5).double().eval()
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    rng = np.random.default_rng(2)
    images = rng.standard_normal((2, 32, 32, 3))
    expected = ref_forward(_flat(tree), TINY, images)
    with torch.no_grad():
        ours = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), mode='tensor')
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_converter_checks_arch_and_leftovers():
    tree = synthetic_tree(TINY, num_classes=3)
    assert infer_qnavit_arch(tree)['embed_dims'] == 8
    with pytest.raises(ValueError, match='does not match arch'):
        convert_qnavit_flax(tree, arch=QnAViT.resolve_arch('tiny'))
    tree['QnAStage_0']['QnA_Block_1']['extra'] = {'kernel': np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match='not converted'):
        convert_qnavit_flax(tree)


def test_converter_released_tiny_layout_matches_arch():
    shapes = flax_shapes(ARCH_SETTINGS['tiny'], 1000)
    tree = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    state, arch = convert_qnavit_flax(tree, arch=QnAViT.resolve_arch('tiny'))
    model = _classifier(ARCH_SETTINGS['tiny'], 1000)
    own = model.state_dict()
    assert set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in state)


# ------------------------------------------------------------------------------------------
# msgpack tool
# ------------------------------------------------------------------------------------------
def _load_tool():
    spec = importlib.util.spec_from_file_location('qnavit_flax_to_mmpretrain', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flax_msgpack_bytes(tree):
    """Encode like flax.serialization.msgpack_serialize (ExtType 1 = (shape, dtype, bytes))."""
    msgpack = pytest.importorskip('msgpack')

    def default(obj):
        if isinstance(obj, np.ndarray):
            payload = msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes('C')),
                                    use_bin_type=True)
            return msgpack.ExtType(1, payload)
        if isinstance(obj, np.generic):
            payload = msgpack.packb(((), obj.dtype.name, np.asarray(obj).tobytes('C')),
                                    use_bin_type=True)
            return msgpack.ExtType(3, payload)
        raise TypeError(type(obj))

    return msgpack.packb(tree, default=default, strict_types=True)


def test_tool_msgpack_round_trip(tmp_path):
    pytest.importorskip('msgpack')
    tool = _load_tool()
    params = synthetic_tree(TINY, num_classes=4, seed=3)
    mirror = {k: v for k, v in params.items()}  # optimizer state beside the params
    train_state = {'step': np.int32(7), 'params': params,
                   'opt_state': {'0': {'mu': mirror, 'count': np.int32(7)}},
                   'batch_stats': None, 'dynamic_scale': None}
    src, dst = str(tmp_path / 'checkpoint_7'), str(tmp_path / 'qnavit.pth')
    with open(src, 'wb') as f:
        f.write(_flax_msgpack_bytes(train_state))
    tool.main([src, dst])
    saved = torch.load(dst, weights_only=True)
    expected, arch = convert_qnavit_flax(params)
    assert saved['meta']['arch']['num_classes'] == 4
    assert set(saved['state_dict']) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(saved['state_dict'][name], value)
    with pytest.raises(KeyError, match='--key'):
        tool.find_params({'opt_state': {}})


def test_tool_decodes_bfloat16_scalars_and_chunks():
    msgpack = pytest.importorskip('msgpack')
    tool = _load_tool()
    values = np.array([[1.5, -2.0], [0.25, 3.0]], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    payload = msgpack.packb(((2, 2), 'bfloat16', bf16.tobytes()), use_bin_type=True)
    chunked = {'__msgpack_chunked_array__': True, 'shape': {'0': 2, '1': 3},
               'chunks': {'0': np.arange(4, dtype=np.float32),
                          '1': np.arange(4, 6, dtype=np.float32)}}
    data = _flax_msgpack_bytes({'a': msgpack.ExtType(1, payload), 'b': np.float32(2.5),
                                'c': chunked})
    tree = tool.load_flax_msgpack(data)
    np.testing.assert_array_equal(tree['a'], values)
    assert tree['b'] == np.float32(2.5)
    np.testing.assert_array_equal(tree['c'], np.arange(6, dtype=np.float32).reshape(2, 3))
