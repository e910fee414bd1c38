"""The rest of the official NAT release: DiNAT-Large (kernel 7 / 11), DiNAT_s and isotropic NAT / DiNAT.

Everything expected here is written from the release's architecture tables and checkpoint layouts
(names, shapes, axis orders), independently of the backbone code:

* parameter counts of every classifier from a closed-form formula, MACs at 224 from an analytic
  formula (checked against the project's FLOP counter on shrunk models, and against the figures of
  the release's classification README);
* synthetic checkpoints laid out like the official ones load with no missing / unexpected keys
  (full-size: names and shapes; shrunk: values), and the loaded backbones reproduce a forward of the
  layout's tensors written here with the reference NA op (``na2d(..., backend='reference')``);
* the DiNATs interface (out_indices, frozen_stages, with_cp, odd sizes, small maps, registries).
"""
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import localattn  # noqa: F401  registers the backbones, installs the safe checkpoint loader
from localattn.backbones import DiNAT, DiNATs, IsotropicDiNAT, IsotropicNAT
from localattn.backbones.dinats import DINATS_DILATIONS
from localattn.backbones.nat import DINAT_DILATIONS
from localattn.ops.na import na2d

# ---------------------------------------------------------------------------------------------
# The official architectures (reference facts, section 5), written out here on purpose.
# ---------------------------------------------------------------------------------------------
DINAT_LARGE = dict(embed_dims=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.)
DINATS = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    'large': dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
ISOTROPIC = {'small': dict(embed_dims=384, num_heads=12), 'base': dict(embed_dims=768, num_heads=24)}

#: The release's classification README (SHI-Labs/Neighborhood-Attention-Transformer,
#: classification/DiNAT.md): params (M) and GFLOPs at 224. The reference facts give none for these
#: models; DiNAT-Large with kernel 11 has no published figure at 224.
RELEASE = {
    'dinat-large-k7': (200, 30.6),
    'dinats-tiny': (28, 4.5), 'dinats-small': (50, 8.7), 'dinats-base': (88, 15.4),
    'dinats-large': (197, 34.5),
    'isotropic-nat-small': (22, 4.3), 'isotropic-dinat-small': (22, 4.3),
    'isotropic-nat-base': (86, 16.9), 'isotropic-dinat-base': (86, 16.9),
}


# ---------------------------------------------------------------------------------------------
# Closed-form parameter counts
# ---------------------------------------------------------------------------------------------
def block_params(c, heads, mlp_ratio, kernel):
    """norm1, qkv (with bias), rpb, proj, norm2, fc1, fc2."""
    hidden = int(c * mlp_ratio)
    return (2 * c + (3 * c * c + 3 * c) + heads * (2 * kernel - 1)**2 + (c * c + c) + 2 * c
            + (c * hidden + hidden) + (hidden * c + c))


def nat_layout_params(embed_dims, depths, num_heads, mlp_ratio, kernel, classes=1000):
    """Conv tokenizer (3x3 s2 to C/2, 3x3 s2 to C, LN), blocks, 3x3 s2 conv downsamplers without bias
    + LN, final LN, head."""
    c0 = embed_dims
    n = (3 * 9 * c0 // 2 + c0 // 2) + (c0 // 2 * 9 * c0 + c0) + 2 * c0
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = c0 * 2**i
        n += depth * block_params(c, heads, mlp_ratio, kernel)
        if i < len(depths) - 1:
            n += 9 * c * 2 * c + 2 * 2 * c
    c_last = c0 * 2**(len(depths) - 1)
    return n + 2 * c_last + c_last * classes + classes


def dinats_params(embed_dims, depths, num_heads, mlp_ratio=4., kernel=7, classes=1000):
    """4x4 patch conv (with bias) + LN, blocks, patch merging (LN(4C), Linear 4C -> 2C without
    bias), final LN, head."""
    c0 = embed_dims
    n = 3 * 16 * c0 + c0 + 2 * c0
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = c0 * 2**i
        n += depth * block_params(c, heads, mlp_ratio, kernel)
        if i < len(depths) - 1:
            n += 2 * 4 * c + 4 * c * 2 * c
    c_last = c0 * 2**(len(depths) - 1)
    return n + 2 * c_last + c_last * classes + classes


def isotropic_params(embed_dims, num_heads, depth=12, mlp_ratio=4., kernel=7, patch=16,
                     classes=1000):
    """16x16 patch conv + LN, 12 blocks, final LN, head."""
    c = embed_dims
    return (3 * patch * patch * c + c + 2 * c + depth * block_params(c, num_heads, mlp_ratio, kernel)
            + 2 * c + c * classes + classes)


# ---------------------------------------------------------------------------------------------
# Analytic multiply-adds (the fvcore/mmengine convention: linears, convs, NA 2 * N * k^2 * C,
# LayerNorm 5 per element, average pooling 1 per input element)
# ---------------------------------------------------------------------------------------------
def na_keys(n, kernel, dilation):
    """Keys along an axis of n tokens: the kernel, or the whole dilation group on short axes."""
    return kernel if kernel * dilation <= n else -(-n // dilation)


def blocks_macs(h, w, c, dilations, mlp_ratio, kernel):
    macs = 0
    for d in dilations:
        n = h * w
        macs += n * (4 * c * c + 2 * c * int(c * mlp_ratio))  # qkv, proj, fc1, fc2
        macs += 2 * n * c * na_keys(h, kernel, d) * na_keys(w, kernel, d)
        macs += 2 * 5 * n * c  # norm1, norm2
    return macs


def nat_layout_macs(size, embed_dims, depths, mlp_ratio, kernel, dilations, classes=1000):
    h, w = size
    c0 = embed_dims
    h, w = -(-h // 2), -(-w // 2)
    macs = h * w * (c0 // 2) * 3 * 9
    h, w = -(-h // 2), -(-w // 2)
    macs += h * w * c0 * (c0 // 2) * 9 + 5 * h * w * c0
    for i in range(len(depths)):
        c = c0 * 2**i
        macs += blocks_macs(h, w, c, dilations[i], mlp_ratio, kernel)
        if i < len(depths) - 1:
            h, w = -(-h // 2), -(-w // 2)
            macs += h * w * 2 * c * c * 9 + 5 * h * w * 2 * c
    c_last = c0 * 2**(len(depths) - 1)
    return macs + 5 * h * w * c_last + h * w * c_last + c_last * classes


def dinats_macs(size, embed_dims, depths, dilations, mlp_ratio=4., kernel=7, classes=1000):
    h, w = -(-size[0] // 4), -(-size[1] // 4)
    c0 = embed_dims
    macs = h * w * c0 * 3 * 16 + 5 * h * w * c0
    for i in range(len(depths)):
        c = c0 * 2**i
        macs += blocks_macs(h, w, c, dilations[i], mlp_ratio, kernel)
        if i < len(depths) - 1:
            h, w = -(-h // 2), -(-w // 2)
            macs += 5 * h * w * 4 * c + h * w * 4 * c * 2 * c
    c_last = c0 * 2**(len(depths) - 1)
    return macs + 5 * h * w * c_last + h * w * c_last + c_last * classes


def isotropic_macs(size, embed_dims, dilations, mlp_ratio=4., kernel=7, patch=16, classes=1000):
    h, w = -(-size[0] // patch), -(-size[1] // patch)
    c = embed_dims
    macs = h * w * c * 3 * patch * patch + 5 * h * w * c
    macs += blocks_macs(h, w, c, dilations, mlp_ratio, kernel)
    return macs + 5 * h * w * c + h * w * c + c * classes


# ---------------------------------------------------------------------------------------------
# Synthetic checkpoints in the official layouts (names, shapes, axis orders of the release)
# ---------------------------------------------------------------------------------------------
def tensor_maker(kind, seed=0):
    """``make(shape, norm_weight=False)``: ``'random'`` values (LN weights around 1) or ``'empty'``
    (shape-only, full-size checks)."""
    gen = torch.Generator().manual_seed(seed)

    def make(*shape, norm_weight=False):
        if kind == 'empty':
            return torch.empty(*shape)
        values = torch.randn(*shape, generator=gen) * 0.1
        return values + 1 if norm_weight else values

    return make


def official_block(make, prefix, c, heads, mlp_ratio, kernel):
    """One block of every layout: ``qkv`` is Linear(C, 3C) whose output is ordered
    (q|k|v, head, head_dim); ``rpb`` is [heads, 2k-1, 2k-1] (rows: vertical offset)."""
    hidden = int(c * mlp_ratio)
    return {
        prefix + 'norm1.weight': make(c, norm_weight=True), prefix + 'norm1.bias': make(c),
        prefix + 'attn.qkv.weight': make(3 * c, c), prefix + 'attn.qkv.bias': make(3 * c),
        prefix + 'attn.rpb': make(heads, 2 * kernel - 1, 2 * kernel - 1),
        prefix + 'attn.proj.weight': make(c, c), prefix + 'attn.proj.bias': make(c),
        prefix + 'norm2.weight': make(c, norm_weight=True), prefix + 'norm2.bias': make(c),
        prefix + 'mlp.fc1.weight': make(hidden, c), prefix + 'mlp.fc1.bias': make(hidden),
        prefix + 'mlp.fc2.weight': make(c, hidden), prefix + 'mlp.fc2.bias': make(c),
    }


def classifier_end(make, c_last, classes):
    return {'norm.weight': make(c_last, norm_weight=True), 'norm.bias': make(c_last),
            'head.weight': make(classes, c_last), 'head.bias': make(classes)}


def nat_layout_checkpoint(make, embed_dims, depths, num_heads, mlp_ratio, kernel, classes=10):
    """NAT / DiNAT (DiNAT-Large) layout: ``patch_embed.proj.{0,1}``, ``levels.{i}.blocks.{j}``,
    ``levels.{i}.downsample.{reduction,norm}``, ``norm``, ``head``."""
    c0 = embed_dims
    sd = {'patch_embed.proj.0.weight': make(c0 // 2, 3, 3, 3), 'patch_embed.proj.0.bias': make(c0 // 2),
          'patch_embed.proj.1.weight': make(c0, c0 // 2, 3, 3), 'patch_embed.proj.1.bias': make(c0),
          'patch_embed.norm.weight': make(c0, norm_weight=True), 'patch_embed.norm.bias': make(c0)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = c0 * 2**i
        for j in range(depth):
            sd.update(official_block(make, f'levels.{i}.blocks.{j}.', c, heads, mlp_ratio, kernel))
        if i < len(depths) - 1:
            sd.update({f'levels.{i}.downsample.reduction.weight': make(2 * c, c, 3, 3),
                       f'levels.{i}.downsample.norm.weight': make(2 * c, norm_weight=True),
                       f'levels.{i}.downsample.norm.bias': make(2 * c)})
    sd.update(classifier_end(make, c0 * 2**(len(depths) - 1), classes))
    return sd


def dinats_checkpoint(make, embed_dims, depths, num_heads, mlp_ratio=4., kernel=7, classes=10):
    """DiNAT_s layout: ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}``,
    ``layers.{i}.downsample.{reduction (Linear 4C -> 2C, no bias), norm (4C)}``, ``norm``, ``head``."""
    c0 = embed_dims
    sd = {'patch_embed.proj.weight': make(c0, 3, 4, 4), 'patch_embed.proj.bias': make(c0),
          'patch_embed.norm.weight': make(c0, norm_weight=True), 'patch_embed.norm.bias': make(c0)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = c0 * 2**i
        for j in range(depth):
            sd.update(official_block(make, f'layers.{i}.blocks.{j}.', c, heads, mlp_ratio, kernel))
        if i < len(depths) - 1:
            sd.update({f'layers.{i}.downsample.reduction.weight': make(2 * c, 4 * c),
                       f'layers.{i}.downsample.norm.weight': make(4 * c, norm_weight=True),
                       f'layers.{i}.downsample.norm.bias': make(4 * c)})
    sd.update(classifier_end(make, c0 * 2**(len(depths) - 1), classes))
    return sd


def isotropic_checkpoint(make, embed_dims, num_heads, depth=12, mlp_ratio=4., kernel=7, patch=16,
                         classes=10):
    """Isotropic layout: ``patch_embed.{proj,norm}``, ``layers.{j}``, ``norm``, ``head``."""
    c = embed_dims
    sd = {'patch_embed.proj.weight': make(c, 3, patch, patch), 'patch_embed.proj.bias': make(c),
          'patch_embed.norm.weight': make(c, norm_weight=True), 'patch_embed.norm.bias': make(c)}
    for j in range(depth):
        sd.update(official_block(make, f'layers.{j}.', c, num_heads, mlp_ratio, kernel))
    sd.update(classifier_end(make, c, classes))
    return sd


# ---------------------------------------------------------------------------------------------
# Independent forwards of the layouts (channels-last), reference NA op
# ---------------------------------------------------------------------------------------------
def ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + '.weight'], sd[name + '.bias'])


def ref_block(x, sd, p, heads, kernel, dilation, rpb=None):
    b, h, w, c = x.shape
    qkv = F.linear(ln(x, sd, p + 'norm1'), sd[p + 'attn.qkv.weight'], sd[p + 'attn.qkv.bias'])
    q, k, v = qkv.view(b, h, w, 3, heads, c // heads).unbind(3)
    table = sd[p + 'attn.rpb'] if rpb is None else rpb
    attn = na2d(q, k, v, kernel, dilation=dilation, rpb=table, backend='reference')
    x = x + F.linear(attn.reshape(b, h, w, c), sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'])
    hidden = F.gelu(F.linear(ln(x, sd, p + 'norm2'), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
    return x + F.linear(hidden, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])


def bicubic_table(table, kernel):
    """The release's "11x11interp": bicubic interpolation of [heads, 2k-1, 2k-1] to the new kernel."""
    return F.interpolate(table[None], size=(2 * kernel - 1, ) * 2, mode='bicubic',
                         align_corners=False)[0]


def nat_layout_forward(sd, x, num_heads, dilations, kernel):
    """Last-level features through the classifier norm, NCHW."""
    x = F.conv2d(x, sd['patch_embed.proj.0.weight'], sd['patch_embed.proj.0.bias'], stride=2, padding=1)
    x = F.conv2d(x, sd['patch_embed.proj.1.weight'], sd['patch_embed.proj.1.bias'], stride=2, padding=1)
    x = ln(x.permute(0, 2, 3, 1), sd, 'patch_embed.norm')
    for i, heads in enumerate(num_heads):
        for j, d in enumerate(dilations[i]):
            p = f'levels.{i}.blocks.{j}.'
            rpb = sd[p + 'attn.rpb']
            if rpb.shape[-1] != 2 * kernel - 1:
                rpb = bicubic_table(rpb, kernel)
            x = ref_block(x, sd, p, heads, kernel, d, rpb)
        if i < len(num_heads) - 1:
            x = F.conv2d(x.permute(0, 3, 1, 2), sd[f'levels.{i}.downsample.reduction.weight'],
                         stride=2, padding=1).permute(0, 2, 3, 1)
            x = ln(x, sd, f'levels.{i}.downsample.norm')
    return ln(x, sd, 'norm').permute(0, 3, 1, 2)


def dinats_forward(sd, x, num_heads, dilations, kernel=7):
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (4 - w % 4) % 4, 0, (4 - h % 4) % 4))
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=4)
    x = ln(x.permute(0, 2, 3, 1), sd, 'patch_embed.norm')
    for i, heads in enumerate(num_heads):
        for j, d in enumerate(dilations[i]):
            x = ref_block(x, sd, f'layers.{i}.blocks.{j}.', heads, kernel, d)
        if i < len(num_heads) - 1:
            h, w = x.shape[1:3]
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            phases = [x[:, r::2, s::2] for r, s in ((0, 0), (1, 0), (0, 1), (1, 1))]
            x = ln(torch.cat(phases, dim=-1), sd, f'layers.{i}.downsample.norm')
            x = F.linear(x, sd[f'layers.{i}.downsample.reduction.weight'])
    return ln(x, sd, 'norm').permute(0, 3, 1, 2)


def isotropic_forward(sd, x, num_heads, dilations, kernel=7, patch=16):
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (patch - w % patch) % patch, 0, (patch - h % patch) % patch))
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch)
    x = ln(x.permute(0, 2, 3, 1), sd, 'patch_embed.norm')
    for j, d in enumerate(dilations):
        x = ref_block(x, sd, f'layers.{j}.', num_heads, kernel, d)
    return ln(x, sd, 'norm').permute(0, 3, 1, 2)


def build_classifier(backbone, in_channels, num_classes=1000):
    from mmpretrain.registry import MODELS
    return MODELS.build(dict(
        type='ImageClassifier', backbone=backbone, neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=in_channels,
                  loss=dict(type='CrossEntropyLoss'))))


# ---------------------------------------------------------------------------------------------
# Full-size models: params, FLOPs, official key layout
# ---------------------------------------------------------------------------------------------
def full_size(name):
    """(backbone config, classifier in_channels, exact params, MACs at 224, checkpoint builder)."""
    if name.startswith('dinat-large'):
        k = 7 if name.endswith('k7') else 11
        dil = DINAT_DILATIONS['imagenet']
        return (dict(type='DiNAT', arch='large', kernel_size=k, out_indices=(3, )), 1536,
                nat_layout_params(**DINAT_LARGE, kernel=k),
                nat_layout_macs((224, 224), 192, DINAT_LARGE['depths'], 2., k, dil),
                lambda make, kernel=k: nat_layout_checkpoint(make, **DINAT_LARGE, kernel=kernel,
                                                             classes=1000))
    if name.startswith('dinats'):
        spec = DINATS[name.split('-')[1]]
        dil = [level[:d] for level, d in zip([[1, 8], [1, 4], [1, 2] * 9, [1, 1]], spec['depths'])]
        return (dict(type='DiNATs', arch=name.split('-')[1], out_indices=(3, )),
                spec['embed_dims'] * 8, dinats_params(**spec),
                dinats_macs((224, 224), spec['embed_dims'], spec['depths'], dil),
                lambda make, kernel=7: dinats_checkpoint(make, **spec, kernel=kernel, classes=1000))
    _, family, size = name.split('-')
    spec = ISOTROPIC[size]
    dil = [1, 2] * 6 if family == 'dinat' else [1] * 12
    return (dict(type='IsotropicNAT' if family == 'nat' else 'IsotropicDiNAT', arch=size),
            spec['embed_dims'], isotropic_params(**spec),
            isotropic_macs((224, 224), spec['embed_dims'], dil),
            lambda make, kernel=7: isotropic_checkpoint(make, **spec, kernel=kernel, classes=1000))


FULL_SIZE = ['dinat-large-k7', 'dinat-large-k11', 'dinats-tiny', 'dinats-small', 'dinats-base',
             'dinats-large', 'isotropic-nat-small', 'isotropic-dinat-small', 'isotropic-nat-base',
             'isotropic-dinat-base']


@pytest.fixture
def no_param_init(monkeypatch):
    """Full-size models are only counted and loaded: skip torch's default init (seconds each)."""
    for cls in (nn.Linear, nn.Conv2d, nn.LayerNorm):
        monkeypatch.setattr(cls, 'reset_parameters', lambda self: None)


@pytest.mark.parametrize('name', FULL_SIZE)
def test_full_size_params_flops_and_official_keys(name, no_param_init):
    backbone, channels, params, macs, checkpoint = full_size(name)
    model = build_classifier(backbone, channels)
    n = sum(p.numel() for p in model.parameters())
    assert n == params, (name, n, params)
    if name in RELEASE:
        params_m, gflops = RELEASE[name]
        # the README gives whole millions, rounded or cut (DiNAT-L: 200.94M listed as 200M)
        assert abs(n / 1e6 - params_m) < 1, (name, n)
        assert abs(macs / 1e9 - gflops) / gflops < 0.05, (name, macs)
    # official layout, names and shapes: every backbone key loaded, nothing unexpected
    official = checkpoint(tensor_maker('empty'))
    report = model.backbone.load_pretrained({'model': official})
    assert report.missing == [] and report.unexpected == [] and report.skipped == [], report.format()
    assert report.new == [] and sorted(report.ignored) == ['head.bias', 'head.weight']
    last = 'norm3' if 'isotropic' not in name else 'norm11'
    assert report.renamed == {'norm.weight': f'{last}.weight', 'norm.bias': f'{last}.bias'}
    assert len(report.loaded) == len(official) - 2
    if name == 'dinat-large-k11':   # the kernel-7 22k checkpoint into the kernel-11 model
        report = model.backbone.load_pretrained(checkpoint(tensor_maker('empty'), kernel=7))
        assert report.clean and len(report.resized) == sum(DINAT_LARGE['depths'])
        assert report.resized[0] == 'levels.0.blocks.0.attn.rpb: (6, 13, 13) -> (6, 21, 21)'


def test_flop_counter_matches_the_analytic_formulas():
    """The project's counter (mmengine's tracer + analytic NA) gives exactly the formulas used above,
    on shrunk models at an odd size (short axes included)."""
    from localattn.analysis import count_flops_params
    nat_arch = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratio=2.)
    nat_dil = [[2], [3], [1], [1]]
    dinats_arch = dict(embed_dims=16, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2))
    size = (97, 131)
    cases = [
        (dict(type='DiNAT', arch=nat_arch, kernel_size=5, dilations=nat_dil, out_indices=(3, )), 128,
         nat_layout_macs(size, 16, (1, 1, 1, 1), 2., 5, nat_dil, classes=10)),
        (dict(type='DiNATs', arch=dinats_arch, out_indices=(3, )), 128,
         dinats_macs(size, 16, (2, 1, 1, 1), [[1, 8], [1], [1], [1]], classes=10)),
        (dict(type='IsotropicDiNAT', arch=dict(embed_dims=32, depth=2, num_heads=1)), 32,
         isotropic_macs(size, 32, [1, 2], classes=10)),
    ]
    for backbone, channels, expected in cases:
        result = count_flops_params(build_classifier(backbone, channels, num_classes=10), (3, *size))
        assert result['flops'] == expected, (backbone['type'], expected, result['flops_by_operator'])


# ---------------------------------------------------------------------------------------------
# Shrunk archs of the same structure: values load and the forward matches the layout's
# ---------------------------------------------------------------------------------------------
#: DiNAT-Large's structure (mlp ratio 2, no layer scale, head dim 32 replaced by 8) shrunk.
SMALL_LARGE = dict(embed_dims=16, depths=(2, 2, 2, 1), num_heads=(2, 2, 4, 4), mlp_ratio=2.)
SMALL_DINATS = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4))
SMALL_ISO = dict(embed_dims=32, num_heads=2, depth=4)


def load_and_check(model, path):
    """``init_cfg``-style load (what configs do), then the report of the same load."""
    model.init_weights()
    report = model.load_pretrained(str(path))
    assert report.clean and report.new == [], report.format()
    return model.eval()


@pytest.mark.parametrize('kernel,ckpt_kernel', [(7, 7), (11, 11), (11, 7)])
def test_dinat_large_layout_forward(tmp_path, kernel, ckpt_kernel):
    official = nat_layout_checkpoint(tensor_maker('random', seed=kernel), **SMALL_LARGE,
                                     kernel=ckpt_kernel)
    torch.save({'model': official}, tmp_path / 'ckpt.pth')
    # stage sides at 352 px: 88, 44, 22, 11 (dilation * kernel fits every stage)
    dilations = [[1, 8], [1, 4], [1, 2], [1]] if kernel == 11 else [[1, 8], [1, 6], [1, 3], [1]]
    model = DiNAT(arch=dict(SMALL_LARGE), kernel_size=kernel, dilations=dilations,
                  out_indices=(3, ), init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'ckpt.pth')))
    model = load_and_check(model, tmp_path / 'ckpt.pth')
    x = torch.randn(1, 3, 352, 352)
    with torch.no_grad():
        out = model(x)[0]
        expected = nat_layout_forward(official, x, SMALL_LARGE['num_heads'], dilations, kernel)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_dinats_layout_forward_odd_size(tmp_path):
    official = dinats_checkpoint(tensor_maker('random', seed=1), **SMALL_DINATS)
    torch.save({'state_dict': official}, tmp_path / 'ckpt.pth')
    model = DiNATs(arch=dict(SMALL_DINATS), out_indices=(3, ),
                   init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'ckpt.pth')))
    model = load_and_check(model, tmp_path / 'ckpt.pth')
    assert model.dilations == [[1, 8], [1, 4], [1, 2], [1, 1]]   # the 'imagenet' preset, truncated
    x = torch.randn(1, 3, 230, 237)   # stages 58x60, 29x30, 15x15, 8x8: both merging paddings
    with torch.no_grad():
        out = model(x)[0]
        expected = dinats_forward(official, x, SMALL_DINATS['num_heads'], model.dilations)
    assert out.shape == (1, 128, 8, 8)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('cls,dilations', [(IsotropicNAT, [1, 1, 1, 1]), (IsotropicDiNAT, [1, 2, 1, 2])])
def test_isotropic_layout_forward(tmp_path, cls, dilations):
    official = isotropic_checkpoint(tensor_maker('random', seed=2), **SMALL_ISO)
    torch.save({'module.' + k: v for k, v in official.items()}, tmp_path / 'ckpt.pth')
    model = cls(arch=dict(SMALL_ISO), init_cfg=dict(type='Pretrained',
                                                    checkpoint=str(tmp_path / 'ckpt.pth')))
    model = load_and_check(model, tmp_path / 'ckpt.pth')
    assert model.dilations == dilations
    x = torch.randn(1, 3, 230, 240)   # padded to 240x240: 15x15 tokens
    with torch.no_grad():
        out = model(x)
        expected = isotropic_forward(official, x, SMALL_ISO['num_heads'], dilations)
    assert len(out) == 1 and out[0].shape == (1, 32, 15, 15)
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-4)


def load_tool():
    path = Path(__file__).resolve().parents[1] / 'tools/model_converters/nat_to_mmpretrain.py'
    spec = importlib.util.spec_from_file_location('nat_to_mmpretrain', str(path))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize('layout', ['dinats', 'isotropic'])
def test_converter_tool_gives_the_official_logits(tmp_path, layout, capsys):
    from mmengine.runner import load_checkpoint
    if layout == 'dinats':
        official = dinats_checkpoint(tensor_maker('random', seed=3), **SMALL_DINATS, classes=10)
        backbone, channels = dict(type='DiNATs', arch=dict(SMALL_DINATS), out_indices=(3, )), 128
        x = torch.randn(2, 3, 224, 228)
        features = dinats_forward(official, x, SMALL_DINATS['num_heads'], [[1, 8], [1, 4], [1, 2], [1, 1]])
    else:
        official = isotropic_checkpoint(tensor_maker('random', seed=3), **SMALL_ISO, classes=10)
        backbone, channels = dict(type='IsotropicDiNAT', arch=dict(SMALL_ISO)), 32
        x = torch.randn(2, 3, 224, 224)
        features = isotropic_forward(official, x, SMALL_ISO['num_heads'], [1, 2, 1, 2])
    src, dst = tmp_path / 'official.pth', tmp_path / 'out' / 'mmpretrain.pth'
    torch.save({'model': official}, src)
    load_tool().main([str(src), str(dst)])
    printed = capsys.readouterr().out
    assert f"'{layout}' layout" in printed and "num_classes=10" in printed
    converted = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in converted)
    classifier = build_classifier(backbone, channels, num_classes=10).eval()
    load_checkpoint(classifier, str(dst), map_location='cpu', strict=True)
    with torch.no_grad():
        logits = classifier(x, mode='tensor')
    expected = F.linear(features.mean(dim=(2, 3)), official['head.weight'], official['head.bias'])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_full_size_presets_print_their_names(tmp_path, capsys, no_param_init):
    official = dinats_checkpoint(tensor_maker('empty'), **DINATS['tiny'], classes=1000)
    torch.save(official, tmp_path / 'tiny.pth')
    load_tool().main([str(tmp_path / 'tiny.pth'), str(tmp_path / 'out.pth')])
    assert "type='DiNATs', arch='tiny', out_indices=(3, )" in capsys.readouterr().out


@pytest.mark.parametrize('target,source,match', [
    (lambda: DiNATs(arch=dict(SMALL_DINATS)), 'nat', "type='NAT' / 'DiNAT'"),
    (lambda: IsotropicNAT(arch=dict(SMALL_ISO)), 'dinats', "type='DiNATs'"),
    (lambda: DiNATs(arch=dict(SMALL_DINATS)), 'isotropic', "'IsotropicNAT' / 'IsotropicDiNAT'"),
    (lambda: DiNAT(arch=dict(SMALL_LARGE)), 'dinats', "type='DiNATs'"),
])
def test_checkpoint_of_another_layout_is_refused(target, source, match):
    make = tensor_maker('random')
    checkpoint = {'nat': lambda: nat_layout_checkpoint(make, **SMALL_LARGE, kernel=7),
                  'dinats': lambda: dinats_checkpoint(make, **SMALL_DINATS),
                  'isotropic': lambda: isotropic_checkpoint(make, **SMALL_ISO)}[source]()
    with pytest.raises(ValueError, match=match):
        target().load_pretrained(checkpoint)


# ---------------------------------------------------------------------------------------------
# Arch tables and presets
# ---------------------------------------------------------------------------------------------
def test_dinat_archs_and_presets():
    assert DiNAT.resolve_arch('large') == dict(DINAT_LARGE, layer_scale=None, drop_path_rate=0.35,
                                               kernel_size=7)
    assert DiNAT.resolve_arch('small')['layer_scale'] is None        # DiNAT-Small: none
    assert localattn.backbones.NAT.resolve_arch('small')['layer_scale'] == 1e-5
    assert not hasattr(DiNAT(arch='small', dilations='coco').levels[0].blocks[0], 'gamma1')
    assert DINAT_DILATIONS['imagenet-384'] == [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]
    assert DINAT_DILATIONS['ade20k-640'] == [[1, 20, 1], [1, 5, 1, 10],
                                             [1, 2, 1, 3, 1, 4, 1, 5] * 2 + [1, 5], [1, 2, 1, 2, 1]]
    assert DINAT_DILATIONS['mask2former'] == [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3] * 4 + [1, 3],
                                              [1, 1, 1, 1, 1]]
    for name, preset in DINAT_DILATIONS.items():
        assert [len(level) for level in preset] == [3, 4, 18, 5], name
    assert DINATS_DILATIONS == {
        'imagenet': [[1, 8], [1, 4], [1, 2] * 9, [1, 1]],
        'imagenet-384': [[1, 13], [1, 6], [1, 3] * 9, [1, 1]],
        'coco': [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]],
        'ade20k': [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2]]}
    # DiNAT_s-Tiny (stage 3 of 6 blocks) takes the first entries: one [1, 3, 1, 5, 1, 7] for COCO
    tiny_arch = dict(DINATS['tiny'], embed_dims=24)
    assert DiNATs(arch=tiny_arch, dilations='coco').dilations[2] == [1, 3, 1, 5, 1, 7]
    assert DiNATs(arch=tiny_arch).dilations == [[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]]


def test_argument_validation():
    with pytest.raises(ValueError, match=r"'base', 'large', 'small', 'tiny'"):
        DiNATs(arch='mini')
    with pytest.raises(ValueError, match=r"\['base', 'small'\]"):
        IsotropicNAT(arch='tiny')
    with pytest.raises(ValueError, match=r"'ade20k', 'coco', 'imagenet', 'imagenet-384'"):
        DiNATs(arch=dict(SMALL_DINATS), dilations='ade20k-640')
    with pytest.raises(ValueError, match='dilations\\[1\\] has 1 entries'):
        DiNATs(arch=dict(SMALL_DINATS), dilations=[[1, 2], [1], [1, 2], [1, 1]])
    with pytest.raises(ValueError, match='positive int .* or 4 positive ints'):
        IsotropicDiNAT(arch=dict(SMALL_ISO), dilations=[1, 2])
    with pytest.raises(TypeError, match='IsotropicDiNAT'):
        IsotropicNAT(arch=dict(SMALL_ISO), dilations=2)
    with pytest.raises(ValueError, match='num_heads'):
        DiNATs(arch=dict(SMALL_DINATS, num_heads=(3, 2, 4, 4)))
    with pytest.raises(ValueError, match=r'out_indices .*\[-4, 4\)'):
        DiNATs(arch=dict(SMALL_DINATS), out_indices=(4, ))
    with pytest.raises(ValueError, match=r'frozen_stages .*\[-1, 4\]'):
        DiNATs(arch=dict(SMALL_DINATS), frozen_stages=5)
    with pytest.raises(ValueError, match=r'out_indices .*\[-4, 4\)'):
        IsotropicNAT(arch=dict(SMALL_ISO), out_indices=(4, ))


# ---------------------------------------------------------------------------------------------
# DiNATs interface
# ---------------------------------------------------------------------------------------------
TINY_DINATS = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


@pytest.mark.parametrize('dilations', ['imagenet', 'coco'])
def test_dinats_shapes_any_size(dilations):
    """Strides 4..32 with ceil at every step; COCO dilations on small maps run (short-axis rule)."""
    model = DiNATs(arch=TINY_DINATS, dilations=dilations).eval()
    for size in [(67, 45), (33, 97), (17, 19)]:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, *size))
        h, w = -(-size[0] // 4), -(-size[1] // 4)
        for i, out in enumerate(outs):
            assert out.shape == (1, 8 * 2**i, h, w) and torch.isfinite(out).all()
            h, w = -(-h // 2), -(-w // 2)


def test_dinats_out_indices():
    model = DiNATs(arch=TINY_DINATS, out_indices=(-1, 1)).eval()
    assert model.out_indices == (1, 3) and not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 12), (2, 64, 2, 3)]
    early = DiNATs(arch=TINY_DINATS, out_indices=(0, ))
    assert [tuple(o.shape) for o in early(torch.randn(1, 3, 32, 32))] == [(1, 8, 8, 8)]


@pytest.mark.parametrize('frozen', [-1, 0, 1, 2, 3, 4])
def test_dinats_every_frozen_stages_value(frozen):
    model = DiNATs(arch=TINY_DINATS, frozen_stages=frozen)
    model.train()
    frozen_modules = ([model.patch_embed] if frozen >= 0 else []) + \
        [model.layers[i] for i in range(max(frozen, 0))] + \
        [getattr(model, f'norm{i}') for i in range(max(frozen, 0))]
    for module in frozen_modules:
        assert all(not m.training for m in module.modules())
        assert all(not p.requires_grad for p in module.parameters())
    for i in range(max(frozen, 0), 4):
        assert model.layers[i].training and all(p.requires_grad for p in model.layers[i].parameters())
    outs = model(torch.randn(1, 3, 32, 32))
    if frozen < 4:
        sum(o.sum() for o in outs).backward()
        assert (model.patch_embed.proj.weight.grad is None) == (frozen >= 0)


def test_isotropic_out_indices_and_frozen_stages():
    model = IsotropicDiNAT(arch=dict(SMALL_ISO), out_indices=(1, -1), frozen_stages=2)
    model.train()
    assert model.out_indices == (1, 3) and hasattr(model, 'norm1') and hasattr(model, 'norm3')
    assert not model.patch_embed.training and not model.layers[1].training and not model.norm1.training
    assert model.layers[2].training and all(p.requires_grad for p in model.layers[2].parameters())
    outs = model(torch.randn(1, 3, 40, 70))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 3, 5)] * 2
    outs[1].sum().backward()
    assert model.layers[1].mlp.fc1.weight.grad is None and model.layers[3].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize('cls,arch', [(DiNATs, TINY_DINATS), (IsotropicDiNAT, dict(SMALL_ISO))])
def test_with_cp_same_outputs_and_grads(cls, arch):
    torch.manual_seed(0)
    ref = cls(arch=arch, drop_path_rate=0.2)
    ref.init_weights()
    ckpt = cls(arch=arch, drop_path_rate=0.2, with_cp=True)
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 36, 44)
    results = []
    for model in (ref.train(), ckpt.train()):
        torch.manual_seed(123)
        outs = model(x)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_each_registry(scope):
    registry = importlib.import_module(f'{scope}.registry').MODELS
    for cfg, cls in ((dict(type='DiNATs', arch=TINY_DINATS, out_indices=(2, 3)), DiNATs),
                     (dict(type='IsotropicNAT', arch=dict(SMALL_ISO)), IsotropicNAT),
                     (dict(type='IsotropicDiNAT', arch=dict(SMALL_ISO)), IsotropicDiNAT),
                     (dict(type='DiNAT', arch=dict(SMALL_LARGE), kernel_size=11,
                           dilations='mask2former'), DiNAT)):
        model = registry.build(cfg)
        assert type(model) is cls
    assert model.kernel_size == 11 and model.levels[1].blocks[1].attn.dilation == (4, 4)
