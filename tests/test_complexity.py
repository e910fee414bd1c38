"""FLOPs / params helper: attention layers counted analytically (by type) on mmengine's FlopAnalyzer."""
import types

import pytest
import torch
import torch.nn as nn

import localattn  # noqa: F401
from localattn.analysis import (
    AttentionFlopAnalyzer,
    count_flops_params,
    register_module_counter,
    unregister_module_counter,
)
from localattn.backbones import NAT, DiNAT
from localattn.layers import NeighborhoodAttention2d

TINY = dict(embed_dims=16, depths=(1, 2, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratio=2.)

#: NAT paper (Table 1): params (M) and GFLOPs (multiply-adds) at 224x224.
PAPER = dict(mini=(20, 2.7), tiny=(28, 4.3), small=(51, 7.8), base=(90, 13.7))


def classifier(backbone_type, arch, embed_dims):
    from mmpretrain.registry import MODELS
    return MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type=backbone_type, arch=arch, out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels=8 * embed_dims)))


def analytic_na(depths, embed_dims, kernel, height, width, dilations=None):
    """Sum over blocks of 2 * N * k_H * k_W * C with N the real tokens of each level. An axis of
    length L < k * d attends its whole dilation group: ceil(L / d) keys along it."""
    total = 0
    h, w = -(-height // 4), -(-width // 4)
    for i, depth in enumerate(depths):
        for j in range(depth):
            d = dilations[i][j] if dilations else 1
            keys = [kernel if kernel * d <= n else -(-n // d) for n in (h, w)]
            total += 2 * h * w * keys[0] * keys[1] * embed_dims * 2**i
        h, w = -(-h // 2), -(-w // 2)
    return total


# small/base give 7.805 / 13.721 GFLOPs (see README); their params are tested in test_nat_backbone.py.
@pytest.mark.parametrize('arch', ['mini', 'tiny'])
def test_nat_classifier_flops_and_params_match_paper(arch):
    from localattn.backbones.nat import NAT_ARCHS
    spec = NAT_ARCHS[arch]
    result = count_flops_params(classifier('NAT', arch, spec['embed_dims']), (3, 224, 224))
    params_m, gflops = PAPER[arch]
    assert abs(result['params'] / 1e6 - params_m) / params_m < 0.005
    assert abs(result['flops'] / 1e9 - gflops) / gflops < 0.05
    assert result['flops_by_operator']['neighborhood_attention'] == analytic_na(
        spec['depths'], spec['embed_dims'], 7, 224, 224)
    assert result['flops'] == sum(result['flops_by_operator'].values())
    assert 'levels.2' in result['table']


def test_dinat_counts_like_nat():
    nat = count_flops_params(NAT(arch=TINY, out_indices=(3, )), (3, 224, 224))
    dinat = count_flops_params(DiNAT(arch=TINY, out_indices=(3, )), (3, 224, 224))
    assert nat['flops'] == dinat['flops'] and nat['params'] == dinat['params']


def without_attention_core(model):
    """``model`` with every NA layer's core replaced by ``v`` (its qkv and proj linears still run),
    by instance attributes of this test's model only."""
    for layer in model.modules():
        if isinstance(layer, NeighborhoodAttention2d):
            def forward(self, x):
                return self.proj(self.qkv(x)[..., 2 * x.shape[-1]:])
            layer.forward = types.MethodType(forward, layer)
    return model


@pytest.mark.parametrize('size', [(64, 96), (223, 150)])
def test_na_counted_exactly_and_internals_excluded(size):
    model = DiNAT(arch=TINY, dilations='coco')   # short axes: whole dilation groups, padded maps
    result = count_flops_params(model, (3, *size))
    na = result['flops_by_operator']['neighborhood_attention']
    assert na == analytic_na(TINY['depths'], 16, 7, *size, dilations=model.dilations)
    # everything but the attention core: a plain trace of the model without it
    from mmengine.analysis import FlopAnalyzer
    with torch.no_grad():
        rest = FlopAnalyzer(without_attention_core(model).eval(), (torch.randn(1, 3, *size), ))
        rest.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        assert result['flops'] == rest.total() + na
    # the per-module rows add up: a block's NA row is its qkv + proj + the analytic count
    block = 'levels.0.blocks.0.attn'
    analyzer = AttentionFlopAnalyzer(DiNAT(arch=TINY, dilations='coco').eval(), (torch.randn(1, 3, *size), ))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        by_module = analyzer.by_module()
    assert by_module[block] == by_module[block + '.qkv'] + by_module[block + '.proj'] + \
        analyzer.by_operator(block)['neighborhood_attention']
    assert analyzer.calls['neighborhood_attention'] == sum(TINY['depths'])
    assert not any('na_' in op or 'PythonOp' in op for op in analyzer.unsupported_ops())


def test_counting_patches_nothing_and_keeps_numerics():
    model = NAT(arch=TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    count_flops_params(model, (3, 64, 64))
    assert all(not m._forward_hooks for m in model.modules())  # the counting hooks are gone
    assert {m.backend for m in model.modules() if isinstance(m, NeighborhoodAttention2d)} == {'auto'}
    with torch.no_grad():
        got = model(x)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.training is False
    model.train()
    count_flops_params(model, (3, 64, 64))
    assert model.training is True


def test_mmengine_table_shows_the_analytic_counts():
    from mmengine.analysis.print_helper import complexity_stats_table
    model = NAT(arch=TINY, out_indices=(3, )).eval()
    analyzer = AttentionFlopAnalyzer(model, (torch.randn(1, 3, 96, 96), ))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analyzer.total()
    assert total == count_flops_params(model, (3, 96, 96))['flops']
    assert total == sum(analyzer.by_operator().values()) == analyzer.by_module()['']
    assert analyzer.total('levels') == sum(analyzer.total(f'levels.{i}') for i in range(4))
    assert 'levels.0' in complexity_stats_table(analyzer, max_depth=2)


def test_register_other_attention_layers():
    class Attend(nn.Module):
        def forward(self, x):
            return (x @ x.transpose(-1, -2)).softmax(-1) @ x   # traced: 2 * 4 * 4 * 8 MACs

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.attend = Attend()

        def forward(self, x):
            return self.attend(self.fc(x))

    plain = count_flops_params(Toy(), (4, 8))
    assert plain['flops'] == 4 * 8 * 8 + 2 * 4 * 4 * 8
    register_module_counter(Attend, lambda module, inputs, output: 100 * inputs[0].shape[-2], 'toy_attention')
    try:
        result = count_flops_params(Toy(), (4, 8))
    finally:
        unregister_module_counter(Attend)
    assert result['flops_by_operator'] == {'linear': 4 * 8 * 8, 'toy_attention': 400}
    assert result['flops'] == 400 + 4 * 8 * 8
    assert count_flops_params(Toy(), (4, 8))['flops'] == plain['flops']


def test_get_flops_tool(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    config = tmp_path / 'nat_cls.py'
    config.write_text(
        "default_scope = 'mmpretrain'\n"
        "model = dict(type='ImageClassifier',\n"
        "             backbone=dict(type='NAT', arch=dict(embed_dims=16, depths=(1, 1, 1, 1),\n"
        "                           num_heads=(1, 1, 2, 2)), out_indices=(3, )),\n"
        "             neck=dict(type='GlobalAveragePooling'),\n"
        "             head=dict(type='LinearClsHead', num_classes=10, in_channels=128))\n")
    path = Path(__file__).parents[1] / 'tools' / 'analysis_tools' / 'get_flops.py'
    spec = importlib.util.spec_from_file_location('get_flops', str(path))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.main([str(config), '--shape', '96', '80'])
    out = capsys.readouterr().out
    assert 'Params:' in out and 'FLOPs' in out and '(1, 3, 96, 80)' in out
    assert result['flops_by_operator']['neighborhood_attention'] == analytic_na(
        (1, 1, 1, 1), 16, 7, 96, 80)
