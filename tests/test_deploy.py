"""torch.compile, torch.export and ONNX export of the ops and backbones (small variants of each family).

Compiled forwards (``fullgraph=True``: a graph break fails the test) must equal eager ones, compiled
gradients must equal eager gradients, and onnxruntime must reproduce PyTorch's outputs.
"""
from __future__ import annotations

import importlib.util
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from localattn.analysis.models import PRESETS, build_backbone, parse_spec
from localattn.backbones import NAT, DiNAT, QnAViT
from localattn.deploy import compile_parity, export_onnx, onnx_parity, onnxruntime_outputs
from localattn.ops import na2d, qna2d
from localattn.ops.na import native
from localattn.ops.na.indexing import AxisSpec, axis_windows, pack_axes

HAS_CXX = shutil.which('g++') is not None or shutil.which('c++') is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason='torch.compile (inductor) and the NA kernel need a C++ compiler')
needs_ort = pytest.mark.skipif(importlib.util.find_spec('onnxruntime') is None or
                               importlib.util.find_spec('onnxscript') is None,
                               reason='onnxruntime / onnxscript are not installed')

# Small variants of each family. At 64x96 the maps are 16x24 ... 2x3: windows shifted at borders,
# maps smaller than kernel * dilation (padding + masking), and QnA-ViT windows with padded keys.
SMALL_NAT = dict(embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
SMALL_DINAT = dict(embed_dims=32, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4))
DINAT_DILATIONS = [[1, 3], [1, 2], [1], [1]]
SMALL_QNAVIT = dict(embed_dims=16, qna_depths=(1, 1, 1, 0), msa_depths=(0, 0, 1, 1), qna_heads=(2, 4, 4, 8),
                    msa_heads=(1, 2, 2, 4), window_sizes=(7, 7, 7, 7))
SHAPE = (2, 3, 64, 96)


def _family(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = {'nat': lambda: NAT(arch=SMALL_NAT, drop_path_rate=0.),
             'dinat': lambda: DiNAT(arch=SMALL_DINAT, dilations=DINAT_DILATIONS, drop_path_rate=0.),
             'qnavit': lambda: QnAViT(arch=SMALL_QNAVIT, drop_path_rate=0.)}[name]()
    model.init_weights()
    return model


def _images(shape=SHAPE, seed=1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _close(got, want, rtol=1e-4, atol=1e-5):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# NA custom ops
# ------------------------------------------------------------------------------------------
@needs_cxx
@pytest.mark.parametrize('kernel,dilation,rpb,valid', [(3, 1, True, None), ((3, 5), (2, 1), False, (5, 9)),
                                                       (3, (1, 3), True, None)])
def test_na_custom_op_opcheck(kernel, dilation, rpb, valid):
    """torch.library.opcheck: schema, fake (meta) implementation and autograd registration agree."""
    assert native.library() is not None
    axes = tuple(AxisSpec(length, k, d, 1, False, v) for length, k, d, v in
                 zip((6, 10), *((x, x) if isinstance(x, int) else x for x in (kernel, dilation)),
                     valid or (None, None)))
    q, k, v = (torch.randn(2, 6, 10, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, *(2 * ax.kernel - 1 for ax in axes), dtype=torch.float64, requires_grad=True) if rpb else None
    args = (q, k, v, bias, pack_axes(axes), 0.5, True)
    torch.library.opcheck(native.na_cpu_forward, args)
    torch.library.opcheck(native.na_cpu_forward, (q.detach(), k.detach(), v.detach(),
                                                  None if bias is None else bias.detach(),
                                                  pack_axes(axes), 0.5, False))


@needs_cxx
def test_na_strided_inputs_and_inference_path():
    """q/v sliced from a fused qkv tensor (strided rows, no copy) and the statistics-free inference
    path give the same result as contiguous inputs and the reference."""
    qkv = torch.randn(2, 9, 11, 3, 2, 8)
    q, k, v = qkv.unbind(3)
    rpb = torch.randn(2, 5, 5)
    want = na2d(q.contiguous(), k.contiguous(), v.contiguous(), 3, rpb=rpb, backend='reference')
    with torch.no_grad():
        got = na2d(q, k, v, 3, rpb=rpb, backend='native')
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dilated = na2d(q, k, v, 3, dilation=(2, 3), rpb=rpb, backend='native')
    torch.testing.assert_close(dilated, na2d(q, k, v, 3, dilation=(2, 3), rpb=rpb, backend='reference'),
                               rtol=1e-5, atol=1e-6)


@needs_cxx
@pytest.mark.parametrize('dilation,backend', [(1, 'auto'), ((2, 3), 'auto'), ((2, 3), 'reference')])
def test_na2d_compiled_forward_and_backward(dilation, backend):
    """na2d under torch.compile(fullgraph=True) on CPU (auto: the custom ops; reference: traced
    gathers, used under compile with dropout): values and gradients."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 9, 13, 2, 8, generator=gen, requires_grad=True) for _ in range(3)]
    rpb = torch.randn(2, 5, 5, generator=gen, requires_grad=True)

    def fn(q, k, v, bias):
        return na2d(q, k, v, 3, dilation=dilation, rpb=bias, backend=backend)

    grad = torch.randn(2, 9, 13, 2, 8, generator=gen)
    eager = fn(*inputs, rpb)
    want = torch.autograd.grad(eager, [*inputs, rpb], grad)
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(*inputs, rpb)
    got = torch.autograd.grad(out, [*inputs, rpb], grad)
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_export_does_not_cache_fake_tables():
    """Non-strict export runs Python under fake tensors: index tables built there must not be cached
    (a later eager call with the same geometry would read fake tensors)."""
    spec = AxisSpec(37, 5, 3)  # a geometry no other test builds

    class Layer(nn.Module):
        def forward(self, q):
            return na2d(q, q, q, 5, dilation=3)

    axis_windows.cache_clear()
    q = torch.randn(1, 37, 37, 1, 4)
    torch.export.export(Layer(), (q, ), strict=False)
    assert axis_windows.cache_info().currsize == 0
    first = axis_windows(spec).first
    assert type(first) is torch.Tensor
    torch.testing.assert_close(Layer()(q), na2d(q, q, q, 5, dilation=3, backend='reference'))


def test_auto_backend_under_export_is_unrolled():
    """torch.export of NA holds only aten ops (no localattn custom op, no k*k gather table)."""
    q = torch.randn(1, 8, 8, 2, 4)

    class Layer(nn.Module):
        def forward(self, x):
            return na2d(x, x, x, 3)

    program = torch.export.export(Layer(), (q, ), strict=False)
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert not any('localattn' in t for t in targets), targets
    assert 'aten.index_select.default' in targets and 'aten.index.Tensor' not in targets, targets
    torch.testing.assert_close(program.module()(q), Layer()(q), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# QnA: the exact fallback as torch.cond
# ------------------------------------------------------------------------------------------
def _qna_inputs(underflow: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 9, 10, 2, 2, generator=gen)
    if underflow:  # a region 200 below the global maximum: its windows need the fallback
        logits[0, :4, :4] -= 200.
    value = torch.randn(2, 9, 10, 2, 3, generator=gen)
    rpb = torch.randn(2, 2, 3, 3, generator=gen)
    weights = torch.randn(2, 2, 3, 3, generator=gen)
    return logits, value, rpb, weights


def _explicit_qna(logits, value, rpb, weights, k=3, stride=1):
    """Explicit per-window softmax (independent of the library's fallback code)."""
    b, h, w, nq, heads = logits.shape
    pad = (k - 1) // 2
    out_h, out_w = -(-h // stride), -(-w // stride)
    out = torch.zeros(b, out_h, out_w, heads, value.shape[-1], dtype=torch.float64)
    for y in range(out_h):
        for x in range(out_w):
            rows = [stride * y + o - pad for o in range(k)]
            cols = [stride * x + o - pad for o in range(k)]
            for qi in range(nq):
                for m in range(heads):
                    scores, vals, ws = [], [], []
                    for i, r in enumerate(rows):
                        for j, c in enumerate(cols):
                            if 0 <= r < h and 0 <= c < w:
                                scores.append(logits[:, r, c, qi, m].double() + rpb[qi, m, i, j].double())
                                vals.append(value[:, r, c, m].double())
                                ws.append(weights[qi, m, i, j].double())
                    attn = torch.softmax(torch.stack(scores, 1), 1)
                    out[:, y, x, m] += torch.einsum('bn,n,bnd->bd', attn, torch.stack(ws), torch.stack(vals, 1))
    return out.float()


@pytest.mark.parametrize('stride', [1, 2])
def test_dense_fallback_matches_explicit(stride):
    """The traced fallback (every output's window softmax, no data-dependent shapes)."""
    from localattn.ops.qna import _dense_window_softmax
    logits, value, rpb, weights = _qna_inputs(True)
    dense = _dense_window_softmax(logits, value, rpb, weights, 3, stride)
    assert dense.shape == (2, -(-9 // stride), -(-10 // stride), 2, 2, 3)
    torch.testing.assert_close(dense.sum(3), _explicit_qna(logits, value, rpb, weights, stride=stride),
                               rtol=1e-5, atol=1e-5)


@needs_cxx
@pytest.mark.parametrize('underflow,fullgraph', [(False, True), (True, True), (True, False)])
def test_qna2d_compiled_matches_eager_and_explicit(underflow, fullgraph):
    torch._dynamo.reset()
    logits, value, rpb, weights = (t.requires_grad_() for t in _qna_inputs(underflow))

    def fn(a, b, c, d):
        return qna2d(a, b, c, d, kernel_size=3)

    eager = fn(logits, value, rpb, weights)
    torch.testing.assert_close(eager, _explicit_qna(logits.detach(), value.detach(), rpb.detach(), weights.detach()),
                               rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(eager)
    want = torch.autograd.grad(eager, (logits, value, rpb, weights), grad)
    out = torch.compile(fn, fullgraph=fullgraph)(logits, value, rpb, weights)
    got = torch.autograd.grad(out, (logits, value, rpb, weights), grad)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_ort
def test_qna2d_onnx_keeps_the_fallback(tmp_path):
    """The fallback is an ONNX If: onnxruntime agrees with the explicit softmax on both branches."""

    class Op(nn.Module):
        def __init__(self):
            super().__init__()
            _, _, rpb, weights = _qna_inputs(False)
            self.rpb, self.weights = nn.Parameter(rpb), nn.Parameter(weights)

        def forward(self, logits, value):
            return qna2d(logits, value, self.rpb, self.weights, kernel_size=3)

    op = Op().eval()
    logits, value, _, _ = _qna_inputs(False)
    program = torch.onnx.export(op, (logits, value), dynamo=True, opset_version=18)
    path = tmp_path / 'qna.onnx'
    program.save(str(path))
    assert 'If' in {node.op_type for node in program.model_proto.graph.node}
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for underflow in (False, True):
        logits, value, _, _ = _qna_inputs(underflow)
        (got, ) = session.run(None, dict(zip([i.name for i in session.get_inputs()], (logits.numpy(), value.numpy()))))
        want = _explicit_qna(logits, value, op.rpb.detach(), op.weights.detach())
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Backbones
# ------------------------------------------------------------------------------------------
@needs_cxx
@pytest.mark.parametrize('family', ['nat', 'dinat', 'qnavit'])
def test_compiled_backbone_forward_equals_eager(family):
    torch._dynamo.reset()
    model = _family(family).eval()
    eager, compiled = compile_parity(model, _images())
    _close(compiled, eager)
    if family == 'qnavit':  # also without fullgraph (the default a benchmark or user would use)
        torch._dynamo.reset()
        _close(compile_parity(model, _images(), fullgraph=False)[1], eager)


@needs_cxx
def test_compiled_backbone_training_step_equals_eager():
    """A compiled training step (forward + backward) of NAT gives the eager gradients."""
    torch._dynamo.reset()
    model = _family('nat').train()
    images = _images()

    def grads(module):
        model.zero_grad()
        sum(o.square().mean() for o in module(images)).backward()
        return [p.grad.clone() for p in model.parameters()]

    want = grads(model)
    got = grads(torch.compile(model, fullgraph=True))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@needs_ort
@pytest.mark.parametrize('family', ['nat', 'dinat', 'qnavit'])
def test_onnx_export_matches_pytorch(family, tmp_path):
    model = _family(family)
    images = _images()
    path = export_onnx(model, images, tmp_path / f'{family}.onnx')
    import onnx
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')] == [18]
    assert {node.domain for node in proto.graph.node} <= {'', 'ai.onnx'}  # standard ops only
    rows = onnx_parity(model, path, images)
    assert len(rows) == 4 and rows[0]['shape'] == (2, model.num_features[0], 16, 24)
    for row in rows:
        assert row['max_abs'] <= 1e-5 + 1e-4 * row['max_ref'], row
    # other inputs of the exported size too
    other = _images(seed=7)
    with torch.no_grad():
        want = [t.numpy() for t in model(other)]
    for got, ref in zip(onnxruntime_outputs(path, other), want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_export_onnx_errors(tmp_path):
    model = _family('nat')
    with pytest.raises(ValueError, match='opset_version must be an int >= 17'):
        export_onnx(model, _images(), tmp_path / 'x.onnx', opset_version=13)
    with pytest.raises(ValueError, match=r'inputs must be a \[B, C, H, W\] tensor'):
        export_onnx(model, torch.randn(3, 64, 64), tmp_path / 'x.onnx')


@needs_ort
def test_export_tool(tmp_path, capsys):
    from importlib.machinery import SourceFileLoader
    from pathlib import Path
    tool = Path(__file__).resolve().parents[1] / 'tools' / 'deployment' / 'export_onnx.py'
    module = SourceFileLoader('export_onnx_tool', str(tool)).load_module()
    spec = "NAT:arch={'embed_dims': 16, 'depths': (1, 1, 1, 1), 'num_heads': (1, 1, 2, 2)}"
    model = build_backbone(spec)
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / 'nat.onnx'
    code = module.main([spec, '--shape', '32', '48', '--checkpoint', str(ckpt), '--out', str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert text.count(' ok') == 4, text
    images = torch.randn(1, 3, 32, 48)  # the exported weights are the checkpoint's
    with torch.no_grad():
        want = [t.numpy() for t in model.eval()(images)]
    for got, ref in zip(onnxruntime_outputs(out, images), want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit):
        module.main(['nat-mini', '--opset', '12'])


# ------------------------------------------------------------------------------------------
# Model specs
# ------------------------------------------------------------------------------------------
def test_parse_spec_forms(tmp_path):
    assert parse_spec('swin-t') == ('mmdet', PRESETS['swin-t'])
    scope, cfg = parse_spec("NAT:arch='small', kernel_size=9,out_indices=(1, 2)", scope='mmseg')
    assert scope == 'mmseg' and cfg == dict(type='NAT', arch='small', kernel_size=9, out_indices=(1, 2))
    config = tmp_path / 'cfg.py'
    config.write_text("default_scope = 'mmseg'\nmodel = dict(backbone=dict(type='DiNAT', arch='mini'))\n")
    assert parse_spec(str(config)) == ('mmseg', dict(type='DiNAT', arch='mini'))
    for bad, match in [('', 'non-empty'), ('not a spec', 'neither a preset'), ('NAT:arch', 'expected key=value'),
                       (str(tmp_path / 'missing.py'), 'does not exist')]:
        with pytest.raises(ValueError, match=match):
            parse_spec(bad)
    with pytest.raises(ValueError, match='scope must be one of'):
        parse_spec('NAT', scope='mmfoo')


@pytest.mark.parametrize('name', ['nat-tiny', 'dinat-tiny', 'qnavit-tiny', 'swin-t', 'resnet-50'])
def test_presets_build(name):
    model = build_backbone(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    # paper totals minus the ImageNet head (C_last x 1000 + 1000)
    expected = {'nat-tiny': 27.4, 'dinat-tiny': 27.4, 'qnavit-tiny': 15.2, 'swin-t': 27.5, 'resnet-50': 23.5}[name]
    assert math.isclose(params, expected, rel_tol=0.03), params


def test_build_backbone_leaves_the_default_scope_alone():
    from mmengine.registry import DefaultScope
    before = DefaultScope.get_current_instance()
    build_backbone('resnet-50')
    build_backbone("NAT:arch='mini'", scope='mmpretrain')
    after = DefaultScope.get_current_instance()
    assert (before and before.scope_name) == (after and after.scope_name)
