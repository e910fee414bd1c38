"""The interface every backbone shares (backbones/base.py), checked on each family alike."""
import pytest
import torch

import localattn  # noqa: F401  registers the backbones
from localattn.backbones import NAT, DiNAT, QnAViT
from localattn.backbones.base import HierarchicalBackbone

NAT_TINY = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratio=2.)
QNA_TINY = dict(embed_dims=8, qna_depths=(1, 1, 1, 0), msa_depths=(1, 0, 1, 1), qna_heads=(2, 2, 2, 2),
                msa_heads=(2, 2, 2, 2), window_sizes=(4, 4, 2, 1))
FAMILIES = [(NAT, NAT_TINY, 16), (DiNAT, dict(NAT_TINY, depths=(2, 2, 2, 2)), 16), (QnAViT, QNA_TINY, 8)]
IDS = ['NAT', 'DiNAT', 'QnAViT']


@pytest.mark.parametrize('cls,arch,width', FAMILIES, ids=IDS)
def test_arch_presets_and_num_features(cls, arch, width):
    assert issubclass(cls, HierarchicalBackbone) and 'tiny' in cls.arch_zoo
    model = cls(arch=arch, out_indices=(3, ))
    assert model.num_features == [width * 2**i for i in range(4)] and model.num_stages == 4
    assert model.arch_settings == cls.resolve_arch(arch)
    preset = cls.resolve_arch('TINY')
    assert preset == cls.resolve_arch(cls.arch_zoo['tiny'])
    with pytest.raises(ValueError, match=r"unknown arch 'huge'; choose one of \['base'"):
        cls(arch='huge')
    with pytest.raises(ValueError, match=r"missing keys \['embed_dims'\] / has unknown keys \['window'\]"):
        cls(arch={k: v for k, v in dict(arch, window=3).items() if k != 'embed_dims'})


@pytest.mark.parametrize('cls,arch,width', FAMILIES, ids=IDS)
def test_out_indices(cls, arch, width):
    model = cls(arch=arch, out_indices=(-1, 1)).eval()
    assert model.out_indices == (1, 3)
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 48))
    assert [tuple(o.shape) for o in outs] == [(1, 2 * width, 8, 6), (1, 8 * width, 2, 2)]
    assert cls(arch=arch, out_indices=2).out_indices == (2, )
    for bad in [(0, 4), (), (-5, ), ('1', ), (True, )]:
        with pytest.raises(ValueError, match=r'out_indices .*\[-4, 4\) \(0\.\.3\)'):
            cls(arch=arch, out_indices=bad)
    with pytest.raises(ValueError, match='twice'):
        cls(arch=arch, out_indices=(1, -3))


@pytest.mark.parametrize('frozen', [-1, 0, 1, 2, 3, 4])
@pytest.mark.parametrize('cls,arch,width', FAMILIES, ids=IDS)
def test_every_frozen_stages_value(cls, arch, width, frozen):
    model = cls(arch=arch, frozen_stages=frozen)
    model.train()
    stem, stages = getattr(model, model.stem_name), getattr(model, model.stages_name)
    frozen_modules = ([stem] if frozen >= 0 else []) + [stages[i] for i in range(max(frozen, 0))] + \
        [getattr(model, f'norm{i}') for i in range(max(frozen, 0))]
    for module in frozen_modules:
        assert all(not m.training for m in module.modules())
        assert all(not p.requires_grad for p in module.parameters())
    for i in range(max(frozen, 0), 4):
        assert stages[i].training and all(p.requires_grad for p in stages[i].parameters())
    assert stem.training == (frozen < 0)
    outs = model(torch.randn(1, 3, 32, 32))
    if frozen < 4:
        sum(o.sum() for o in outs).backward()
        assert all(p.grad is None for m in frozen_modules for p in m.parameters())
    for bad in (-2, 5, 1.0, True):
        with pytest.raises(ValueError, match=r'frozen_stages must be an int in \[-1, 4\]'):
            cls(arch=arch, frozen_stages=bad)


@pytest.mark.parametrize('as_list', [False, True])
@pytest.mark.parametrize('cls,arch,width', FAMILIES, ids=IDS)
def test_pretrained_init_cfg_loads_with_a_report(tmp_path, cls, arch, width, as_list):
    from mmengine.logging import MMLogger
    source = cls(arch=arch)
    source.init_weights()
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()},
                'meta': {}}, path)
    pretrained = dict(type='Pretrained', checkpoint=str(path))
    init_cfg = [dict(type='Constant', layer='Linear', val=3.), pretrained] if as_list else pretrained
    target = cls(arch=arch, init_cfg=init_cfg)
    logger = MMLogger.get_current_instance()
    messages = []
    handler = type('Capture', (__import__('logging').Handler, ), {'emit': lambda self, r: messages.append(
        r.getMessage())})()
    logger.addHandler(handler)
    try:
        target.init_weights()
    finally:
        logger.removeHandler(handler)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert any(m.startswith(f'{cls.__name__}: Loaded {len(source.state_dict())} tensors from {path}')
               for m in messages), messages
    report = target.load_pretrained(str(path), prefix='backbone')
    assert report.clean and report.ignored == [] and report.resized == []
