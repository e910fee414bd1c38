"""Input fuzzing of every backbone family on CPU (tiny arch dicts).

Random image sizes from 1 to 1024 pixels per side (seeded; mostly small, plus fixed large and
extreme-aspect ones), batches of 1-3, in eval and train mode: one output per ``out_indices`` with
the family's channels and stride (``ceil`` per stage), all finite, finite gradients in train mode.
A training step of each family under bf16 autocast: finite loss and gradients. Wrong layouts
(channels-last, unbatched, wrong channel count, empty) get an error that says what is expected.
"""
import math
import zlib

import numpy as np
import pytest
import torch

import localattn  # noqa: F401
from localattn.backbones import NAT, DiNAT, DiNATs, IsotropicNAT, QnAViT

NAT_ARCH = dict(embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), kernel_size=3, mlp_ratio=2.)
QNA_ARCH = dict(embed_dims=8, qna_depths=(1, 1, 1, 0), msa_depths=(0, 0, 1, 1), qna_heads=(1, 2, 2, 4),
                msa_heads=(1, 1, 2, 2), window_sizes=(7, 7, 7, 4), qna_kernel_size=3, mlp_ratio=2)

#: family -> (constructor, per-output stride function of the input side).
FAMILIES = {
    'NAT': (lambda: NAT(arch=NAT_ARCH, drop_path_rate=0.1), 4),
    'DiNAT': (lambda: DiNAT(arch=NAT_ARCH, dilations=[[2], [4], [2], [1]], drop_path_rate=0.1), 4),
    'QnAViT': (lambda: QnAViT(arch=QNA_ARCH, drop_path_rate=0.1), 4),
    'DiNATs': (lambda: DiNATs(arch=dict(embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                                        kernel_size=3, mlp_ratio=2.), dilations=[[2], [4], [2], [1]],
                              drop_path_rate=0.1), 4),
    'IsotropicNAT': (lambda: IsotropicNAT(arch=dict(embed_dims=16, depth=2, num_heads=2, kernel_size=3,
                                                    mlp_ratio=2.), out_indices=(0, 1),
                                          drop_path_rate=0.1), 16),
}
FIXED = [(1, 1), (1, 1024), (1024, 3), (613, 1021)]
#: One full-size image, in eval mode only (train mode at this size costs seconds per family).
LARGE = (1024, 1024)


def _sizes(seed, n=8):
    """``n`` random (B, H, W): sides log-uniform in [1, 1024] (most small), batch 1-3."""
    rng = np.random.default_rng(seed)
    sides = np.clip(np.round(np.exp(rng.uniform(0, math.log(1024), size=(n, 2)))), 1, 1024).astype(int)
    return [(int(rng.integers(1, 4)), int(h), int(w)) for h, w in sides]


def _expected(model, h, w, stem_stride):
    """Output shapes: NCHW, stage ``i`` at ``ceil`` of the input / its stride (hierarchical)."""
    shapes = []
    isotropic = isinstance(model, IsotropicNAT)
    for i in model.out_indices:
        if isotropic:
            oh, ow = math.ceil(h / stem_stride), math.ceil(w / stem_stride)
        else:
            oh, ow = h, w
            for _ in range(i + 2):  # stride 4 stem = two halvings, then one per stage
                oh, ow = math.ceil(oh / 2), math.ceil(ow / 2)
        shapes.append((model.num_features[i], oh, ow))
    return shapes


@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    return {name: build() for name, (build, _) in FAMILIES.items()}


@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_random_sizes(family, mode, models):
    model = models[family]
    getattr(model, mode)()
    stride = FAMILIES[family][1]
    sizes = _sizes(seed=zlib.crc32(f'{family}-{mode}'.encode())) + [(1, h, w) for h, w in FIXED]
    if mode == 'eval':
        sizes.append((1, *LARGE))
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, requires_grad=mode == 'train')
        with torch.set_grad_enabled(mode == 'train'):
            outs = model(x)
        assert isinstance(outs, tuple) and len(outs) == len(model.out_indices)
        for out, (c, oh, ow) in zip(outs, _expected(model, h, w, stride)):
            assert tuple(out.shape) == (b, c, oh, ow), (family, mode, (b, h, w))
            assert torch.isfinite(out).all(), (family, mode, (b, h, w))
        if mode == 'train':
            sum(o.float().square().mean() for o in outs).backward()
            assert torch.isfinite(x.grad).all(), (family, (b, h, w))
            for name, param in model.named_parameters():
                assert param.grad is None or torch.isfinite(param.grad).all(), (family, name, (b, h, w))
            model.zero_grad(set_to_none=True)


@pytest.mark.parametrize('family', list(FAMILIES))
def test_bf16_autocast_training_step(family, models):
    model = models[family]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for b, h, w in [(2, 64, 48), (1, 97, 211), (3, 7, 5)]:
        x = torch.randn(b, 3, h, w)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
            loss = sum(o.float().square().mean() for o in outs)
        assert any(o.dtype == torch.bfloat16 for o in outs)  # autocast really ran in bf16
        assert torch.isfinite(loss), (family, (b, h, w))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), (family, (b, h, w))
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize('family', list(FAMILIES))
def test_wrong_layouts_say_what_is_expected(family, models):
    model = models[family].eval()
    cases = {
        'channels-last': (torch.randn(2, 64, 48, 3), r'\[B, C, H, W\] \(NCHW\) with C = 3.*channels-last.*'
                                                       r'permute\(0, 3, 1, 2\)'),
        'unbatched': (torch.randn(3, 64, 48), r'3-D tensor.*add the batch dimension'),
        'unbatched channels-last': (torch.randn(64, 48, 3), r'3-D tensor.*channels-last'),
        'gray': (torch.randn(2, 1, 64, 48), r'got 1 channels.*in_channels=1'),
        'rgba': (torch.randn(2, 4, 64, 48), r'got 4 channels.*in_channels=4'),
        'video': (torch.randn(2, 3, 4, 64, 48), r'\[B, C, H, W\].*5-D'),
        'empty': (torch.randn(1, 3, 0, 48), r'H, W >= 1'),
    }
    for name, (x, pattern) in cases.items():
        with pytest.raises(ValueError, match=pattern):
            model(x)
            pytest.fail(f'{family} accepted {name} input {tuple(x.shape)}')


def test_one_column_downsampler_is_exact_and_finite_under_bf16():
    """NAT's downsampler on one-column maps (tiny inputs reach them at the last levels) runs as its centre
    column: the same output and gradients as the 3x3 conv in fp32, and finite weight gradients under CPU
    bf16 autocast, where PyTorch's conv leaves the all-padding taps' gradient uninitialised now and then
    (NaN in about 9% of calls of the plain conv: 60 clean calls in a row would happen by luck < 1% of runs)."""
    from localattn.backbones.nat import ConvDownsampler
    torch.manual_seed(0)
    down = ConvDownsampler(16, dict(type='LN'))
    for shape in ((3, 1, 1, 16), (2, 5, 1, 16)):
        x = torch.randn(*shape, requires_grad=True)
        out = down(x)
        want = down.norm(down.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        assert out.shape == want.shape == (shape[0], (shape[1] + 1) // 2, 1, 32)
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, down.reduction.weight], g)
        ref = torch.autograd.grad(want, [x, down.reduction.weight], g)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert got[1][..., 0].abs().max() == 0 and got[1][..., 2].abs().max() == 0  # outer columns see padding
    for _ in range(60):
        x = torch.randn(3, 1, 1, 16)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = down(x)
        grad, = torch.autograd.grad(out.float().square().sum(), down.reduction.weight)
        assert torch.isfinite(grad).all()
