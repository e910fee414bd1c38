"""Pretrained weights that silently don't load.

* ``init_cfg=dict(type='Pretrained', ...)`` of every backbone family: a checkpoint that fills less
  than half of the parameter values raises (report + fix), unless ``allow_partial=True``; a partial
  load logs at WARNING with the fraction loaded; shape mismatches are listed with both shapes; a
  complete load logs at INFO.
* ``load_from`` / ``tools/test.py CHECKPOINT`` of whole models: the same check on the backbone part.
"""
import importlib.util
import os.path as osp

import pytest
import torch
from torch import nn

import localattn  # noqa: F401
from localattn import cli
from localattn.backbones import NAT, DiNAT, QnAViT
from localattn.checkpoint import MIN_LOADED_FRACTION, PartialLoadError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

NAT_ARCH = dict(embed_dims=8, depths=(1, 1, 1), num_heads=(1, 2, 4), kernel_size=3)
NAT_WIDE = dict(NAT_ARCH, embed_dims=16)
QNA_ARCH = dict(embed_dims=8, qna_depths=(1, 1, 0), msa_depths=(0, 0, 1), qna_heads=(1, 2, 4),
                msa_heads=(1, 2, 4), window_sizes=(7, 7, 7), qna_kernel_size=3, mlp_ratio=2)
QNA_WIDE = dict(QNA_ARCH, embed_dims=16)
FAMILIES = {
    'NAT': (NAT, dict(arch=NAT_ARCH), dict(arch=NAT_WIDE)),
    'DiNAT': (DiNAT, dict(arch=NAT_ARCH, dilations=[[1], [2], [1]]),
              dict(arch=NAT_WIDE, dilations=[[1], [2], [1]])),
    'QnAViT': (QnAViT, dict(arch=QNA_ARCH), dict(arch=QNA_WIDE)),
}


@pytest.fixture
def logged(monkeypatch):
    """``[(level, message)]`` of the backbones' load reports."""
    from localattn.backbones import base
    records = []
    monkeypatch.setattr(base, 'print_log', lambda msg, logger=None, level=20: records.append((level, msg)))
    return records


def _build(family, kwargs, **extra):
    cls = FAMILIES[family][0]
    return cls(out_indices=(0, 1, 2), **kwargs, **extra)


def _save(tmp_path, state, name='ckpt.pth'):
    path = tmp_path / name
    torch.save({'state_dict': state}, path)
    return str(path)


@pytest.mark.parametrize('family', list(FAMILIES))
def test_other_size_is_refused_with_report_and_fix(family, tmp_path, logged):
    _, small, wide = FAMILIES[family]
    path = _save(tmp_path, _build(family, wide).state_dict())
    model = _build(family, small, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(PartialLoadError) as info:
        model.init_weights()
    message = str(info.value)
    assert path in message and 'allow_partial=True' in message
    assert 'skipped (shape mismatch)' in message and 'checkpoint (' in message and 'vs model (' in message
    assert 'of the model\'s parameter values' in message


@pytest.mark.parametrize('family', list(FAMILIES))
def test_unrelated_keys_are_refused(family, tmp_path):
    path = _save(tmp_path, {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)})
    model = _build(family, FAMILIES[family][1], init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(PartialLoadError, match=r'matches only 0\.0%'):
        model.init_weights()


@pytest.mark.parametrize('family', list(FAMILIES))
def test_allow_partial_loads_and_warns_with_fraction(family, tmp_path, logged):
    _, small, wide = FAMILIES[family]
    path = _save(tmp_path, _build(family, wide).state_dict())
    model = _build(family, small, init_cfg=dict(type='Pretrained', checkpoint=path, allow_partial=True))
    model.init_weights()
    level, message = logged[-1]
    assert level == 30 and '% of the model\'s parameter values' in message


@pytest.mark.parametrize('family', list(FAMILIES))
def test_partial_and_complete_loads_log_levels(family, tmp_path, logged):
    small = FAMILIES[family][1]
    source = _build(family, small)
    full = source.state_dict()
    path = _save(tmp_path, full, 'full.pth')
    model = _build(family, small, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    assert logged[-1][0] == 20 and '(100.0% of the model' in logged[-1][1]
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)

    # one mismatched tensor and a missing first stage: loads, WARNING with the fraction and both shapes
    first_stage = '.'.join(next(k for k in full if k.split('.')[1:2] == ['0']).split('.')[:2]) + '.'
    key = next(k for k in full if k.endswith('norm1.weight') and not k.startswith(first_stage))
    partial = {k: v for k, v in full.items() if not k.startswith(first_stage)}
    partial[key] = torch.zeros(3)
    path = _save(tmp_path, partial, 'partial.pth')
    model = _build(family, small, init_cfg=dict(type='Pretrained', checkpoint=path))
    report = model.load_pretrained(path)
    assert MIN_LOADED_FRACTION <= report.fraction < 1.0
    level, message = logged[-1]
    assert level == 30 and f'({report.fraction:.1%} of the model' in message
    assert f'{key}: checkpoint (3,) vs model ({full[key].shape[0]},)' in message
    assert report.missing and all(k in report.missing for k in full if k.startswith(first_stage))


# ------------------------------------------------------------------------------ load_from
class Detector(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.backbone = NAT(arch=arch, out_indices=(0, 1, 2))
        self.neck = nn.Linear(4, 4)


def test_load_from_backbone_part_matching_nothing():
    wide = Detector(NAT_WIDE).state_dict()
    model = Detector(NAT_ARCH)
    with pytest.raises(PartialLoadError) as info:
        cli.check_checkpoint_coverage(model, {'state_dict': wide}, source='other.pth')
    message = str(info.value)
    assert "backbone's parameter values" in message and 'load_from_allow_partial = True' in message
    assert 'skipped (shape mismatch): backbone.patch_embed' in message
    report = cli.check_checkpoint_coverage(model, {'state_dict': wide}, allow_partial=True)
    assert report.fraction < MIN_LOADED_FRACTION
    # same model: fine; DDP-style 'module.' prefixes are ignored
    ok = {f'module.{k}': v for k, v in model.state_dict().items()}
    assert cli.check_checkpoint_coverage(model, {'state_dict': ok}).clean


def test_load_from_a_backbone_only_checkpoint_says_where_it_belongs():
    model = Detector(NAT_ARCH)
    backbone_only = model.backbone.state_dict()
    with pytest.raises(PartialLoadError, match="backbone-only checkpoint.*init_cfg=dict\\(type='Pretrained'"):
        cli.check_checkpoint_coverage(model, backbone_only, source='nat.pth')


@pytest.mark.slow
def test_tools_test_refuses_a_checkpoint_of_another_model(tmp_path):
    """`tools/test.py` (in-process) with a QnA-ViT classifier checkpoint on the NAT demo config."""
    spec = importlib.util.spec_from_file_location(
        'localattn_generate_synthetic_pretrained', osp.join(ROOT, 'tools', 'dataset_converters',
                                                            'generate_synthetic.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(str(tmp_path / 'data'), num_train=4, num_val=4, size=32, seed=0, tasks=('cls', ))
    root = str(tmp_path / 'data' / 'cls')
    weights = QnAViT(arch=QNA_ARCH, out_indices=(2, )).state_dict()
    other = {'state_dict': {f'backbone.{k}': v for k, v in weights.items()}}
    path = tmp_path / 'qnavit.pth'
    torch.save(other, path)
    config = osp.join(ROOT, 'configs', '_demo_', 'nat-demo_synthetic-cls.py')
    options = [f'{s}_dataloader.dataset.data_root={root}' for s in ('train', 'val', 'test')]
    with pytest.raises(PartialLoadError, match=r'qnavit\.pth matches only 0\.0%'):
        cli.test([config, str(path), '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options])
