"""Deployment helpers: ONNX export with an onnxruntime parity check, and torch.compile checks.

How the backbones trace (``torch.compile``, ``torch.export``, ONNX):

* Neighbourhood attention: under ``torch.compile`` on CPU the compiled kernel runs as the custom ops
  ``localattn::na_cpu_forward`` / ``na_cpu_backward`` (opaque to the compiler, no graph break); on
  CUDA the ``flex`` backend is used. Under ``torch.export`` / ONNX export the ``auto`` backend
  switches to ``unrolled`` (per-window-offset ``index_select`` gathers, einsums and a softmax: plain
  ONNX ops, :mod:`localattn.ops.na.backends.unrolled`). Its index tables are constants of the traced input
  size, so an exported model takes that input size only.
* QnA: the rare exact fallback of :func:`~localattn.ops.qna2d` becomes a ``torch.cond`` (an ONNX
  ``If``), so nothing is dropped from the traced graph.
* The window self-attention of QnA-ViT (:class:`~localattn.layers.WindowSelfAttention`) uses 4-D
  ``scaled_dot_product_attention``.

ONNX export uses the ``torch.export`` based exporter (``dynamo=True``), by default at opset 18, its
native opset. Opset 17 goes through onnx's version converter, which cannot convert every graph (in
torch 2.13 it fails on the ``Pad`` that the NA layer inserts when a map is smaller than the window);
:func:`export_onnx` raises when the saved model does not have the requested opset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

MIN_OPSET = 17
DEFAULT_OPSET = 18


def _eval(model: nn.Module) -> nn.Module:
    model.eval()  # some backbones' train() (mmdet's Swin) return None
    return model


def _outputs(result) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _outputs(r)]
    raise TypeError(f'model outputs must be tensors or (nested) tuples of tensors, got {type(result).__name__}')


def export_onnx(model: nn.Module, inputs: Tensor, path: str | Path, opset_version: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (eval mode) on ``inputs`` ``[B, C, H, W]`` to ``path`` with the dynamo exporter.

    Inputs are named ``input``; outputs ``out0``, ``out1``, ... in the model's order. Shapes are
    static (those of ``inputs``).
    """
    if not isinstance(opset_version, int) or opset_version < MIN_OPSET:
        raise ValueError(f'opset_version must be an int >= {MIN_OPSET}, got {opset_version!r}')
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError(f'inputs must be a [B, C, H, W] tensor, got {getattr(inputs, "shape", inputs)!r}')
    _eval(model)
    with torch.no_grad():
        n_out = len(_outputs(model(inputs)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(model, (inputs, ), dynamo=True, opset_version=opset_version,
                                input_names=['input'], output_names=[f'out{i}' for i in range(n_out)],
                                verbose=False)
    got = next((o.version for o in program.model_proto.opset_import if o.domain in ('', 'ai.onnx')), None)
    if got != opset_version:
        raise RuntimeError(f'ONNX export produced opset {got}, not the requested {opset_version} (the version '
                           f'converter failed, see the log above); use opset_version={DEFAULT_OPSET}')
    program.save(str(path))
    return path


def onnxruntime_outputs(path: str | Path, inputs: Tensor, threads: int | None = None) -> list[np.ndarray]:
    """Run the exported model with onnxruntime's CPU provider."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: inputs.detach().cpu().numpy()})


def onnx_parity(model: nn.Module, path: str | Path, inputs: Tensor) -> list[dict]:
    """Compare onnxruntime's outputs with PyTorch's (eval, no grad): one dict per output with
    ``shape``, ``max_abs`` (max absolute difference), ``max_ref`` (max ``|torch|``) and ``max_rel``
    (``max_abs / max_ref``)."""
    with torch.no_grad():
        reference = [t.float().cpu().numpy() for t in _outputs(_eval(model)(inputs))]
    got = onnxruntime_outputs(path, inputs)
    if len(got) != len(reference):
        raise AssertionError(f'onnxruntime returned {len(got)} outputs, PyTorch {len(reference)}')
    rows = []
    for ref, out in zip(reference, got):
        if ref.shape != out.shape:
            raise AssertionError(f'output shape {out.shape} differs from PyTorch {ref.shape}')
        diff = float(np.abs(ref - out).max()) if ref.size else 0.0
        peak = float(np.abs(ref).max()) if ref.size else 0.0
        rows.append(dict(shape=tuple(ref.shape), max_abs=diff, max_ref=peak, max_rel=diff / max(peak, 1e-12)))
    return rows


def compile_parity(model: nn.Module, inputs: Tensor, fullgraph: bool = True,
                   **compile_kwargs) -> tuple[list[Tensor], list[Tensor]]:
    """``(eager outputs, compiled outputs)`` of ``model`` in its current mode, under no grad.

    ``fullgraph=True`` makes any graph break an error.
    """
    compiled = torch.compile(model, fullgraph=fullgraph, **compile_kwargs)
    with torch.no_grad():
        eager = _outputs(model(inputs))
        traced = _outputs(compiled(inputs))
    return eager, traced


__all__: Sequence[str] = ['export_onnx', 'onnxruntime_outputs', 'onnx_parity', 'compile_parity', 'MIN_OPSET',
                          'DEFAULT_OPSET']
