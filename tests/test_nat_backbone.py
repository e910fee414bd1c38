"""NAT / DiNAT backbones: shapes, interface, checkpoints, converter, registries, optimizer groups."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import localattn  # noqa: F401  registers the backbones, installs the safe checkpoint loader
from localattn.backbones import NAT, DiNAT
from localattn.backbones.nat import DINAT_DILATIONS, NAT_ARCHS
from localattn.checkpoint import resize_rpb
from localattn.converters.nat import infer_arch, load_nat_checkpoint

# Tiny architectures keep every test fast on 2 CPU cores.
TINY = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratio=2.)
TINY_LS = dict(TINY, layer_scale=1e-5)
TINY2 = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), mlp_ratio=2.)


def official_state_dict(embed_dims, depths, num_heads, kernel_size=7, mlp_ratio=2.,
                        layer_scale=False, num_classes=10, in_chans=3, seed=0):
    """Random tensors under the official NAT classification names and shapes (written independently
    of the backbone, from the official layout)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    c0 = embed_dims
    sd = {
        'patch_embed.proj.0.weight': rand(c0 // 2, in_chans, 3, 3),
        'patch_embed.proj.0.bias': rand(c0 // 2),
        'patch_embed.proj.1.weight': rand(c0, c0 // 2, 3, 3),
        'patch_embed.proj.1.bias': rand(c0),
        'patch_embed.norm.weight': 1 + rand(c0),
        'patch_embed.norm.bias': rand(c0),
    }
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = c0 * 2**i
        hidden = int(c * mlp_ratio)
        for j in range(depth):
            p = f'levels.{i}.blocks.{j}.'
            sd.update({
                p + 'norm1.weight': 1 + rand(c), p + 'norm1.bias': rand(c),
                p + 'attn.qkv.weight': rand(3 * c, c), p + 'attn.qkv.bias': rand(3 * c),
                p + 'attn.rpb': rand(heads, 2 * kernel_size - 1, 2 * kernel_size - 1),
                p + 'attn.proj.weight': rand(c, c), p + 'attn.proj.bias': rand(c),
                p + 'norm2.weight': 1 + rand(c), p + 'norm2.bias': rand(c),
                p + 'mlp.fc1.weight': rand(hidden, c), p + 'mlp.fc1.bias': rand(hidden),
                p + 'mlp.fc2.weight': rand(c, hidden), p + 'mlp.fc2.bias': rand(c),
            })
            if layer_scale:
                sd[p + 'gamma1'] = rand(c)
                sd[p + 'gamma2'] = rand(c)
        if i < len(depths) - 1:
            sd[f'levels.{i}.downsample.reduction.weight'] = rand(2 * c, c, 3, 3)
            sd[f'levels.{i}.downsample.norm.weight'] = 1 + rand(2 * c)
            sd[f'levels.{i}.downsample.norm.bias'] = rand(2 * c)
    c_last = c0 * 2**(len(depths) - 1)
    sd['norm.weight'] = 1 + rand(c_last)
    sd['norm.bias'] = rand(c_last)
    sd['head.weight'] = rand(num_classes, c_last)
    sd['head.bias'] = rand(num_classes)
    return sd


def exact_classifier_params(embed_dims, depths, num_heads, mlp_ratio, layer_scale, kernel_size=7,
                            num_classes=1000):
    """Closed-form parameter count of the official NAT classifier."""
    c0 = embed_dims
    n = 3 * 9 * (c0 // 2) + c0 // 2 + (c0 // 2) * 9 * c0 + c0 + 2 * c0
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c, hidden = c0 * 2**i, int(c0 * 2**i * mlp_ratio)
        block = (4 * c + (3 * c * c + 3 * c) + heads * (2 * kernel_size - 1)**2 + (c * c + c)
                 + (c * hidden + hidden) + (hidden * c + c) + (2 * c if layer_scale else 0))
        n += depth * block
        if i < len(depths) - 1:
            n += 9 * c * 2 * c + 4 * c
    c_last = c0 * 2**(len(depths) - 1)
    return n + 2 * c_last + c_last * num_classes + num_classes


def build_classifier(backbone, num_classes=1000):
    from mmpretrain.registry import MODELS
    in_channels = backbone['arch']['embed_dims'] if isinstance(backbone['arch'], dict) else \
        NAT_ARCHS[backbone['arch']]['embed_dims']
    return MODELS.build(dict(
        type='ImageClassifier', backbone=dict(out_indices=(3, ), **backbone),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=in_channels * 8,
                  loss=dict(type='CrossEntropyLoss'))))


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize('cls,arch,kwargs', [
    (NAT, TINY, {}),
    (DiNAT, TINY2, {}),                       # imagenet preset truncated: [[1, 8], [1, 4], [1, 2], [1, 1]]
    (DiNAT, TINY2, dict(dilations='coco')),   # dilation 28 at stride 4: padded and masked on small maps
])
@pytest.mark.parametrize('size', [(224, 224), (511, 383), (64, 64)])
def test_output_shapes(cls, arch, kwargs, size):
    model = cls(arch=arch, **kwargs).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert isinstance(outs, tuple) and len(outs) == 4
    h, w = size
    for i, out in enumerate(outs):
        for _ in range(i + 2):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert out.shape == (1, 16 * 2**i, h, w)
        assert torch.isfinite(out).all()
        h, w = size


def test_out_indices_subset_and_classifier_layout():
    model = NAT(arch=TINY, out_indices=(1, 3)).eval()
    outs = model(torch.randn(2, 3, 64, 96))
    assert [o.shape for o in outs] == [(2, 32, 8, 12), (2, 128, 2, 3)]
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')


def test_dilation_presets():
    assert DiNAT(arch='mini', dilations='imagenet').dilations == [
        [1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
    tiny = DiNAT(arch='tiny', dilations='ade20k')
    assert tiny.dilations == DINAT_DILATIONS['ade20k']
    assert [b.attn.dilation for b in tiny.levels[0].blocks] == [(1, 1), (16, 16), (1, 1)]
    assert NAT(arch=TINY2).dilations == [[1, 1]] * 4
    explicit = DiNAT(arch=TINY2, dilations=[[1, 2], [1, 3], [2, 1], [1, 1]])
    assert explicit.levels[1].blocks[1].attn.dilation == (3, 3)


@pytest.mark.parametrize('dilations', [
    [[1, 2], [1, 2], [1, 2]],                 # wrong number of levels
    [[1, 2], [1, 2], [1, 2], [1]],            # wrong number of blocks
    [[1, 0], [1, 2], [1, 2], [1, 1]],         # non-positive
    [[1, 2.0], [1, 2], [1, 2], [1, 1]],       # not an int
    'cityscapes',                             # unknown preset
])
def test_bad_dilations(dilations):
    with pytest.raises(ValueError, match='dilations'):
        DiNAT(arch=TINY2, dilations=dilations)


def test_argument_validation():
    with pytest.raises(ValueError, match="'base'.*'mini'.*'small'.*'tiny'"):
        NAT(arch='huge')
    with pytest.raises(ValueError, match='out_indices'):
        NAT(arch=TINY, out_indices=(0, 4))
    with pytest.raises(ValueError, match='frozen_stages'):
        NAT(arch=TINY, frozen_stages=5)
    with pytest.raises(ValueError, match='frozen_stages'):
        NAT(arch=TINY, frozen_stages=-2)
    with pytest.raises(ValueError, match='unknown keys'):
        NAT(arch=dict(TINY, window=3))
    with pytest.raises(ValueError, match='num_heads'):
        NAT(arch=dict(TINY, num_heads=(3, 1, 2, 2)))
    with pytest.raises(TypeError, match='DiNAT'):
        NAT(arch=TINY, dilations='imagenet')


def test_arch_options():
    model = NAT(arch='small', kernel_size=5, drop_path_rate=0.1, layer_scale=0)
    block = model.levels[2].blocks[17]
    assert block.attn.rpb.shape == (12, 9, 9)
    assert not hasattr(block, 'gamma1')
    assert model.levels[3].blocks[4].drop_path.drop_prob == pytest.approx(0.1)  # the last block
    assert isinstance(model.levels[0].blocks[0].drop_path, nn.Identity)
    assert NAT(arch='base').levels[0].blocks[0].gamma1.shape == (128, )


# ---------------------------------------------------------------------------------- interface
@pytest.mark.parametrize('frozen', [0, 2])
def test_frozen_stages(frozen):
    model = NAT(arch=TINY, frozen_stages=frozen)
    model.train()
    frozen_modules = [model.patch_embed] + [model.levels[i] for i in range(frozen)] + \
        [getattr(model, f'norm{i}') for i in range(frozen)]
    for module in frozen_modules:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for i in range(frozen, 4):
        assert model.levels[i].training and getattr(model, f'norm{i}').training
        assert all(p.requires_grad for p in model.levels[i].parameters())
    outs = model(torch.randn(1, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert model.patch_embed.proj[0].weight.grad is None
    assert model.levels[3].blocks[0].mlp.fc1.weight.grad is not None


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    ref = NAT(arch=TINY_LS, drop_path_rate=0.2)
    ref.init_weights()
    ckpt = NAT(arch=TINY_LS, drop_path_rate=0.2, with_cp=True)
    ckpt.load_state_dict(ref.state_dict())
    ref.train(), ckpt.train()
    x = torch.randn(2, 3, 64, 48)
    results = []
    for model in (ref, ckpt):
        torch.manual_seed(123)
        outs = model(x)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-6, atol=1e-7, msg=name)


def test_gradients_reach_every_parameter():
    model = DiNAT(arch=dict(TINY2, layer_scale=0.5), dilations=[[1, 2]] * 4)
    model.init_weights()
    outs = model(torch.randn(2, 3, 96, 80))
    sum(o.pow(2).mean() for o in outs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_each_registry(scope):
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    for name, cls in (('NAT', NAT), ('DiNAT', DiNAT)):
        model = registry.build(dict(type=name, arch=TINY2, out_indices=(2, 3)))
        assert type(model) is cls
        assert len(model(torch.randn(1, 3, 64, 64))) == 2


def test_weight_decay_groups_by_custom_keys():
    from mmengine.optim import DefaultOptimWrapperConstructor
    model = DiNAT(arch=TINY_LS)
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.),
                                        'gamma': dict(decay_mult=0.)}))
    optimizer = constructor(model).optimizer
    no_decay = {id(p) for g in optimizer.param_groups if g['weight_decay'] == 0 for p in g['params']}
    expected = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            expected |= {id(p) for p in module.parameters()}
        if getattr(module, 'rpb', None) is not None:
            expected.add(id(module.rpb))
        if hasattr(module, 'gamma1'):
            expected |= {id(module.gamma1), id(module.gamma2)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay == expected, sorted(names[i] for i in no_decay ^ expected)
    decay = [g['weight_decay'] for g in optimizer.param_groups if id(g['params'][0]) not in expected]
    assert decay and all(wd == 0.05 for wd in decay)


# -------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('wrap', ['model', 'module', 'state_dict_backbone'])
@pytest.mark.parametrize('cls', [NAT, DiNAT])
def test_official_checkpoint_loads_through_init_cfg(tmp_path, wrap, cls):
    official = official_state_dict(**dict(TINY_LS, layer_scale=True))
    if wrap == 'model':
        payload = {'model': official, 'epoch': 300}
    elif wrap == 'module':
        payload = {'module.' + k: v for k, v in official.items()}
    else:
        payload = {'state_dict': {'backbone.' + k: v for k, v in official.items()}}
    path = tmp_path / 'official.pth'
    torch.save(payload, path)
    model = cls(arch=TINY_LS, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    loaded = model.state_dict()
    for key, value in official.items():
        if key.startswith('head.'):
            continue
        target = 'norm3' + key[len('norm'):] if key.startswith('norm.') else key
        torch.testing.assert_close(loaded[target], value, rtol=0, atol=0, msg=key)
    report = load_nat_checkpoint(cls(arch=TINY_LS), str(path))
    assert report.missing == [] and report.unexpected == [] and report.skipped == []
    assert report.new == ['norm0', 'norm1', 'norm2']
    assert report.renamed == {'norm.weight': 'norm3.weight', 'norm.bias': 'norm3.bias'}
    assert sorted(report.ignored) == ['head.bias', 'head.weight']
    report = load_nat_checkpoint(cls(arch=TINY_LS, out_indices=(3, )), str(path))
    assert report.clean and report.new == []
    report = load_nat_checkpoint(cls(arch=TINY_LS, out_indices=(0, 1)), str(path))
    assert report.clean and 'norm.weight' in report.ignored


def test_rpb_resized_when_kernel_differs(tmp_path):
    official = official_state_dict(**TINY)
    path = tmp_path / 'k7.pth'
    torch.save(official, path)
    model = NAT(arch=TINY, kernel_size=5, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    report = load_nat_checkpoint(NAT(arch=TINY, kernel_size=5), str(path))
    assert report.missing == [] and report.unexpected == [] and report.skipped == []
    assert len(report.resized) == 4
    key = 'levels.2.blocks.0.attn.rpb'
    table = model.state_dict()[key]
    assert table.shape == (2, 9, 9)
    expected = F.interpolate(official[key][None], size=(9, 9), mode='bicubic', align_corners=False)[0]
    torch.testing.assert_close(table, expected)
    torch.testing.assert_close(resize_rpb(official[key], 7), official[key])
    # the centre offset (0, 0) keeps its value: the grid is symmetric around it
    torch.testing.assert_close(table[:, 4, 4], official[key][:, 6, 6], rtol=0.2, atol=0.05)


def test_converter_tool_and_mmpretrain_logits(tmp_path):
    import importlib.util

    from mmengine.runner import load_checkpoint
    spec = importlib.util.spec_from_file_location(
        'nat_to_mmpretrain', str(__import__('pathlib').Path(__file__).parents[1]
                                 / 'tools/model_converters/nat_to_mmpretrain.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    official = official_state_dict(**dict(TINY_LS, layer_scale=True), num_classes=10)
    src, dst = tmp_path / 'official.pth', tmp_path / 'out' / 'mmpretrain.pth'
    torch.save({'model': official}, src)
    tool.main([str(src), str(dst)])
    converted = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(converted) == {'state_dict'}
    keys = set(converted['state_dict'])
    assert {'backbone.norm3.weight', 'head.fc.weight', 'head.fc.bias'} <= keys
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in keys)
    assert infer_arch(official)['num_classes'] == 10

    classifier = build_classifier(dict(type='NAT', arch=TINY_LS), num_classes=10).eval()
    load_checkpoint(classifier, str(dst), map_location='cpu', strict=True)

    # source layout: backbone trunk from the official names, then official norm -> avgpool -> head
    trunk = NAT(arch=TINY_LS, out_indices=(3, ))
    trunk.load_state_dict({k: v for k, v in official.items()
                           if not k.startswith(('norm.', 'head.'))}, strict=False)
    trunk.eval()
    x = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        h = trunk.patch_embed(x)
        for level in trunk.levels:
            feat, h = level(h)
        feat = F.layer_norm(feat, feat.shape[-1:], official['norm.weight'], official['norm.bias'])
        expected = F.linear(feat.mean(dim=(1, 2)), official['head.weight'], official['head.bias'])
        logits = classifier(x, mode='tensor')
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_mmpretrain_classifier_param_counts():
    """Classifier params equal the official architecture's exact count and round to the paper's."""
    paper = dict(mini=20, tiny=28, small=51, base=90)
    for arch, paper_m in paper.items():
        model = build_classifier(dict(type='NAT', arch=arch))
        n = sum(p.numel() for p in model.parameters())
        spec = NAT_ARCHS[arch]
        assert n == exact_classifier_params(spec['embed_dims'], spec['depths'], spec['num_heads'],
                                            spec['mlp_ratio'], spec['layer_scale'])
        # the paper rounds to whole millions (small: 50.743M -> 51M, 0.50% below)
        assert round(n / 1e6) == paper_m, (arch, n)
    dinat = build_classifier(dict(type='DiNAT', arch='tiny'))
    assert sum(p.numel() for p in dinat.parameters()) == exact_classifier_params(
        64, (3, 4, 18, 5), (2, 4, 8, 16), 3., None)
