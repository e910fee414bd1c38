"""FLOPs / params helper: NA counted analytically on top of mmengine's FlopAnalyzer."""
import types

import pytest
import torch
import torch.nn as nn

import localattn  # noqa: F401
from localattn.analysis import (analytic_flop_counting, count_flops_params, na_macs,
                                register_function_counter, unregister_function_counter)
from localattn.backbones import DiNAT, NAT
from localattn.layers import neighborhood_attention as na_layer_module

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


@pytest.mark.parametrize('size', [(64, 96), (223, 150)])
def test_na_counted_exactly_and_internals_excluded(size):
    model = DiNAT(arch=TINY, dilations='coco')   # short axes: whole dilation groups, padded maps
    result = count_flops_params(model, (3, *size))
    na = result['flops_by_operator']['neighborhood_attention']
    assert na == analytic_na(TINY['depths'], 16, 7, *size, dilations=model.dilations)
    # everything but the attention core: trace with the core replaced by a zero-cost stand-in
    from mmengine.analysis import FlopAnalyzer
    original = na_layer_module.na2d
    na_layer_module.na2d = lambda q, k, v, *args, **kwargs: torch.zeros_like(q)
    try:
        with torch.no_grad():
            rest = FlopAnalyzer(model.eval(), (torch.randn(1, 3, *size), ))
            rest.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            rest_total = rest.total()
    finally:
        na_layer_module.na2d = original
    assert result['flops'] == rest_total + na


def test_counting_restores_and_keeps_numerics():
    model = NAT(arch=TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with analytic_flop_counting() as calls:
            assert na_layer_module.na2d is not localattn.ops.na.na2d
            got = model(x)
        assert calls['neighborhood_attention'] == sum(TINY['depths'])
    assert na_layer_module.na2d is localattn.ops.na.na2d
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.training is False
    model.train()
    count_flops_params(model, (3, 64, 64))
    assert model.training is True


def test_mmengine_get_model_complexity_info_inside_context():
    from mmengine.analysis import get_model_complexity_info
    model = NAT(arch=TINY, out_indices=(3, ))
    ours = count_flops_params(model, (3, 96, 96))
    with torch.no_grad(), analytic_flop_counting():
        info = get_model_complexity_info(model, input_shape=(3, 96, 96), show_table=False,
                                         show_arch=False)
    assert info['flops'] == ours['flops'] and info['params'] == ours['params']


def test_register_other_attention_ops():
    ops = types.SimpleNamespace(attend=lambda x, k: x.softmax(-1))

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return ops.attend(self.fc(x), k=3)

    register_function_counter(ops, 'attend', lambda x, k: 100 * k, 'toy_attention')
    try:
        result = count_flops_params(Toy(), (4, 8))
    finally:
        unregister_function_counter(ops, 'attend')
    assert result['flops_by_operator']['toy_attention'] == 300
    assert result['flops'] == 300 + 4 * 8 * 8
    assert na_macs(torch.zeros(2, 5, 6, 3, 4), kernel_size=(3, 5), valid_size=(4, 6)) == \
        2 * 2 * 4 * 6 * 3 * 4 * 15


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
