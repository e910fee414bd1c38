"""``na_backend``: every NA backbone passes it to all its attention layers (the config knob for the fused
CUDA kernels, ``model.backbone.na_backend='triton'``); outputs do not depend on it; bad names are refused."""
import pytest
import torch

from localattn.backbones import NAT, DiNAT, DiNATs, IsotropicDiNAT, IsotropicNAT
from localattn.layers import NeighborhoodAttention2d

TINY = dict(embed_dims=16, depths=(1, 2), num_heads=(1, 2), kernel_size=3)
CASES = [
    (NAT, dict(arch=TINY, out_indices=(0, 1))),
    (DiNAT, dict(arch=TINY, dilations=[[2], [1, 2]], out_indices=(0, 1))),
    (DiNATs, dict(arch=dict(TINY, depths=(2, 2)), dilations=[[1, 2], [1, 2]], out_indices=(0, 1))),
    (IsotropicNAT, dict(arch=dict(embed_dims=16, depth=2, num_heads=1, kernel_size=3, patch_size=4))),
    (IsotropicDiNAT, dict(arch=dict(embed_dims=16, depth=2, num_heads=1, kernel_size=3, patch_size=4))),
]


def backends(model) -> set:
    return {m.backend for m in model.modules() if isinstance(m, NeighborhoodAttention2d)}


@pytest.mark.parametrize('cls, kwargs', CASES, ids=[c.__name__ for c, _ in CASES])
def test_every_attention_layer_gets_the_backend(cls, kwargs):
    assert backends(cls(**kwargs)) == {'auto'}
    torch.manual_seed(0)
    reference = cls(na_backend='reference', **kwargs).eval()
    assert backends(reference) == {'reference'}
    auto = cls(**kwargs).eval()
    auto.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        for a, b in zip(auto(x), reference(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cls, kwargs', CASES, ids=[c.__name__ for c, _ in CASES])
def test_unknown_backend_is_refused_by_name(cls, kwargs):
    with pytest.raises(ValueError, match=r"na_backend must be one of .*'triton'.*got 'cuda'"):
        cls(na_backend='cuda', **kwargs)


def test_registry_config_sets_it():
    from mmengine.registry import DefaultScope  # noqa: F401 - mmdet's registry needs mmengine
    mmdet_models = pytest.importorskip('mmdet.registry').MODELS
    import localattn.registry  # noqa: F401 - registers the backbones
    model = mmdet_models.build(dict(type='NAT', arch=TINY, out_indices=(0, 1), na_backend='unrolled'))
    assert backends(model) == {'unrolled'}
