"""Convert an official QnA-ViT Flax parameter tree into an mmpretrain ``ImageClassifier`` state dict
for :class:`localattn.backbones.QnAViT` (``backbone.*``) and ``LinearClsHead`` (``head.fc.*``).

The official model builds, for every stage ``s``, first ``LSAStage_{s}`` (its self-attention
blocks) and then ``QnAStage_{s}`` (its QnA blocks, the last of which is the stride-2 downsampler in
every stage but the last). Flax numbers auto-named submodules per class, so both indices equal the
stage index; a stage without self-attention blocks has no ``LSAStage_{s}`` parameters, and the last
stage of the released models has no ``QnAStage_3`` parameters (no QnA block, no downsampler).
Blocks are numbered from 1 within their stage module.

=================================================================  ==============================================
Flax (``/``-joined)                                                ours (``backbone.`` prefix)
=================================================================  ==============================================
``StemBlock_0/conv_1x1/kernel`` (4, 4, 3, C)                       ``stem.weight`` [C, 3, 4, 4]
``LSAStage_{s}/MSA_Block_{i}/LayerNorm_0/{scale,bias}``            ``stages.{s}.msa_blocks.{i-1}.norm1.{weight,bias}``
``.../MultiHeadSelfAttention_0/to_qkv/kernel`` (C, 3C)             ``....attn.qkv.weight`` [3C, C], reordered
``.../MultiHeadSelfAttention_0/to_out/kernel`` (C, C)              ``....attn.proj.weight``
``.../RelativePositionalEmbedding_0/rpe_bias`` ((2w-1)^2, h)       ``....attn.relative_position_bias_table``
``.../LayerNorm_1``, ``.../MlpBlock_0/Dense_{0,1}``                ``....norm2``, ``....ffn.layers.{0.0,1}``
``QnAStage_{s}/QnA_Block_{i}/...`` (stride 1)                      ``stages.{s}.qna_blocks.{i-1}...``
``QnAStage_{s}/QnA_Block_{M+1}_stride_2/...``                      ``stages.{s}.downsample...``
``.../FusedKQnA_0/...``                                            ``....attn.*`` (:func:`convert_qna_layer`)
``.../Conv_0/kernel`` (1, 1, C, 2C)                                ``stages.{s}.downsample.skip.weight`` [2C, C, 1, 1]
``ClassificationHead_0/LayerNorm_0``                               ``norm{last}`` (the head's LayerNorm)
``ClassificationHead_0/head_logits/{kernel,bias}``                 ``head.fc.{weight,bias}`` (no ``backbone.``)
=================================================================  ==============================================

The ``to_qkv`` output axis is ordered (head, [q | k | v], dim) in Flax and (q | k | v, head, dim)
in ``nn.Linear`` ``qkv`` here; the bias tables use the same Swin index
``(dy + w - 1) * (2w - 1) + (dx + w - 1)`` on both sides and are copied unchanged.

The architecture (widths, depths, heads, QnA kernel and queries, windows) is read off the shapes;
pass ``arch`` to have it checked. Every Flax array must be consumed: leftovers raise
``ValueError``. Pure numpy/torch, no JAX; nothing here imports the backbones.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .qna_flax import convert_qna_layer, flatten_flax_params

__all__ = ['infer_qnavit_arch', 'convert_qnavit_flax']

_QNA_BLOCK = re.compile(r'^QnA_Block_(\d+)(_stride_2)?$')
_MSA_BLOCK = re.compile(r'^MSA_Block_(\d+)$')


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float32))  # a copy: sources may be read-only


def _children(flat: Mapping[str, np.ndarray], prefix: str) -> set:
    """Names one level below ``prefix`` (``prefix`` without trailing '/'; '' for the root)."""
    start = f'{prefix}/' if prefix else ''
    return {name[len(start):].split('/', 1)[0] for name in flat if name.startswith(start)}


def _stage_blocks(flat, stage_module: str, pattern: re.Pattern) -> tuple[list[str], Optional[str]]:
    """Sorted stride-1 block names and the stride-2 block name (or None) of one stage module."""
    plain, strided = {}, None
    for child in _children(flat, stage_module):
        match = pattern.match(child)
        if match is None:
            raise ValueError(f'unexpected Flax module {stage_module}/{child}')
        if match.lastindex == 2 and match.group(2):
            strided = child
        else:
            plain[int(match.group(1))] = child
    numbers = sorted(plain)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f'{stage_module}: blocks must be numbered 1..N, got {numbers}')
    if strided is not None and int(_QNA_BLOCK.match(strided).group(1)) != len(numbers) + 1:
        raise ValueError(f'{stage_module}: the stride-2 block must be QnA_Block_{len(numbers) + 1}'
                         f'_stride_2, got {strided}')
    return [plain[n] for n in numbers], strided


def infer_qnavit_arch(params: Mapping[str, Any]) -> dict:
    """Read a :class:`~localattn.backbones.QnAViT` ``arch`` dict (plus ``num_classes``) off a
    Flax parameter tree (nested or ``/``-flat)."""
    flat = flatten_flax_params(params)
    stem = flat.get('StemBlock_0/conv_1x1/kernel')
    if stem is None or stem.ndim != 4 or stem.shape[:2] != (4, 4):
        raise ValueError('not a QnA-ViT Flax tree: StemBlock_0/conv_1x1/kernel (4, 4, in, C) '
                         f'missing or misshapen (top-level modules: {sorted(_children(flat, ""))})')
    embed_dims = int(stem.shape[3])
    stage_ids = set()
    for child in _children(flat, ''):
        match = re.match(r'^(LSAStage|QnAStage)_(\d+)$', child)
        if match:
            stage_ids.add(int(match.group(2)))
        elif child not in ('StemBlock_0', 'ClassificationHead_0'):
            raise ValueError(f'unexpected top-level Flax module {child!r}')
    if not stage_ids:
        raise ValueError('no LSAStage_*/QnAStage_* modules in the Flax tree')
    num_stages = max(stage_ids) + 1
    arch = dict(embed_dims=embed_dims, qna_depths=[], msa_depths=[], qna_heads=[], msa_heads=[],
                window_sizes=[], qna_kernel_size=None, num_queries=None, mlp_ratio=None)
    for s in range(num_stages):
        dims = embed_dims * 2**s
        msa, _ = _stage_blocks(flat, f'LSAStage_{s}', _MSA_BLOCK)
        qna, strided = _stage_blocks(flat, f'QnAStage_{s}', _QNA_BLOCK)
        if (strided is None) != (s == num_stages - 1):
            raise ValueError(f'QnAStage_{s}: expected a stride-2 block in every stage but the '
                             f'last ({num_stages} stages), found {strided!r}')
        arch['msa_depths'].append(len(msa))
        arch['qna_depths'].append(len(qna))
        heads, window = 1, 7
        if msa:
            table = flat[f'LSAStage_{s}/{msa[0]}/MultiHeadSelfAttention_0/'
                         'RelativePositionalEmbedding_0/rpe_bias']
            side = math.isqrt(table.shape[0])
            heads, window = int(table.shape[1]), (side + 1) // 2
        arch['msa_heads'].append(heads)
        arch['window_sizes'].append(window)
        qna_heads = 1
        for block, factor in [(b, 1) for b in qna[:1]] + ([(strided, 2)] if strided else []):
            layer = f'QnAStage_{s}/{block}/FusedKQnA_0'
            query, table = flat[f'{layer}/query'], flat[f'{layer}/rpe_bias']
            num_queries, kernel = int(query.shape[0]), math.isqrt(table.shape[0])
            qna_heads = int(table.shape[1]) // num_queries // factor
            for key, value in (('num_queries', num_queries), ('qna_kernel_size', kernel)):
                if arch[key] not in (None, value):
                    raise ValueError(f'{layer}: {key} {value} differs from other layers '
                                     f'({arch[key]}); QnAViT shares it across stages')
                arch[key] = value
            if factor == 1:
                break
        arch['qna_heads'].append(qna_heads)
        first = (f'LSAStage_{s}/{msa[0]}' if msa else
                 f'QnAStage_{s}/{qna[0]}' if qna else None)
        if first is not None:
            hidden = flat[f'{first}/MlpBlock_0/Dense_0/kernel'].shape[1]
            ratio = hidden // dims
            if arch['mlp_ratio'] not in (None, ratio) or hidden != ratio * dims:
                raise ValueError(f'{first}: MLP width {hidden} is not a shared multiple of {dims}')
            arch['mlp_ratio'] = ratio
    for key, default in (('qna_kernel_size', 3), ('num_queries', 2), ('mlp_ratio', 4)):
        if arch[key] is None:
            arch[key] = default
    for key in ('qna_depths', 'msa_depths', 'qna_heads', 'msa_heads', 'window_sizes'):
        arch[key] = tuple(arch[key])
    return arch


class _Consumer:
    """Hands out flat Flax arrays by name and remembers which were used."""

    def __init__(self, flat: Mapping[str, np.ndarray]) -> None:
        self.flat = dict(flat)
        self.used: set = set()

    def __call__(self, name: str, shape: Optional[tuple] = None) -> np.ndarray:
        if name not in self.flat:
            raise ValueError(f'missing Flax parameter {name!r}')
        array = np.asarray(self.flat[name])
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise ValueError(f'Flax parameter {name!r} has shape {tuple(array.shape)}, expected '
                             f'{tuple(shape)}')
        self.used.add(name)
        return array

    def take_prefix(self, prefix: str) -> dict:
        names = [n for n in self.flat if n.startswith(prefix + '/')]
        self.used.update(names)
        return {n: self.flat[n] for n in names}

    def leftover(self) -> list:
        return sorted(set(self.flat) - self.used)


def _layer_norm(get: _Consumer, src: str, dims: int) -> dict:
    return {'weight': _tensor(get(f'{src}/scale', (dims, ))),
            'bias': _tensor(get(f'{src}/bias', (dims, )))}


def _mlp(get: _Consumer, src: str, dims: int, hidden: int) -> dict:
    return {
        'layers.0.0.weight': _tensor(get(f'{src}/Dense_0/kernel', (dims, hidden)).T),
        'layers.0.0.bias': _tensor(get(f'{src}/Dense_0/bias', (hidden, ))),
        'layers.1.weight': _tensor(get(f'{src}/Dense_1/kernel', (hidden, dims)).T),
        'layers.1.bias': _tensor(get(f'{src}/Dense_1/bias', (dims, ))),
    }


def _prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict:
    return {f'{prefix}.{name}': value for name, value in tensors.items()}


def _msa_block(get: _Consumer, src: str, dst: str, dims: int, heads: int, window: int,
               hidden: int) -> dict:
    out = _prefixed(f'{dst}.norm1', _layer_norm(get, f'{src}/LayerNorm_0', dims))
    attn = f'{src}/MultiHeadSelfAttention_0'
    qkv = get(f'{attn}/to_qkv/kernel', (dims, 3 * dims))
    # Flax output axis (head, [q|k|v], dim) -> ours (q|k|v, head, dim); Linear weight is [out, in].
    qkv = qkv.reshape(dims, heads, 3, dims // heads).transpose(0, 2, 1, 3).reshape(dims, 3 * dims)
    out[f'{dst}.attn.qkv.weight'] = _tensor(qkv.T)
    out[f'{dst}.attn.proj.weight'] = _tensor(get(f'{attn}/to_out/kernel', (dims, dims)).T)
    out[f'{dst}.attn.relative_position_bias_table'] = _tensor(
        get(f'{attn}/RelativePositionalEmbedding_0/rpe_bias', ((2 * window - 1)**2, heads)))
    out.update(_prefixed(f'{dst}.norm2', _layer_norm(get, f'{src}/LayerNorm_1', dims)))
    out.update(_prefixed(f'{dst}.ffn', _mlp(get, f'{src}/MlpBlock_0', dims, hidden)))
    return out


def _qna_block(get: _Consumer, src: str, dst: str, in_dims: int, out_dims: int, heads: int,
               hidden: int) -> dict:
    out = _prefixed(f'{dst}.norm1', _layer_norm(get, f'{src}/LayerNorm_0', in_dims))
    layer = get.take_prefix(f'{src}/FusedKQnA_0')
    attn = convert_qna_layer(layer, heads, prefix=f'{src}/FusedKQnA_0')
    out.update(_prefixed(f'{dst}.attn', attn))
    if in_dims != out_dims:
        kernel = get(f'{src}/Conv_0/kernel', (1, 1, in_dims, out_dims))
        out[f'{dst}.skip.weight'] = _tensor(kernel.transpose(3, 2, 0, 1))
    out.update(_prefixed(f'{dst}.norm2', _layer_norm(get, f'{src}/LayerNorm_1', out_dims)))
    out.update(_prefixed(f'{dst}.ffn', _mlp(get, f'{src}/MlpBlock_0', out_dims, hidden)))
    return out


def _as_tuples(arch: Mapping[str, Any]) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}


def convert_qnavit_flax(params: Mapping[str, Any], arch: Optional[Mapping[str, Any]] = None,
                        with_head: bool = True) -> tuple[dict, dict]:
    """Convert a QnA-ViT Flax parameter tree.

    Args:
        params: the model's ``params`` collection (nested dicts or ``/``-flat names) of numpy
            arrays.
        arch: optional QnAViT arch dict (e.g. ``QnAViT.resolve_arch('tiny')``) to check the
            inferred one against; its keys are compared, ``msa_heads`` / ``window_sizes`` /
            ``qna_heads`` only where the stage has such layers.
        with_head: convert ``ClassificationHead_0/head_logits`` to ``head.fc.*`` (else it must
            be absent or is ignored).

    Returns:
        ``(state_dict, arch)``: ``{'backbone.*': ..., 'head.fc.*': ...}`` float32 tensors for an
        mmpretrain ``ImageClassifier`` with ``QnAViT(arch=arch, out_indices=(last,))``,
        ``GlobalAveragePooling`` and ``LinearClsHead``; and the arch dict (the one read off the
        tree, updated with ``arch`` when given and matching, without ``drop_path_rate``), with
        ``num_classes`` when the head is converted.
    """
    flat = flatten_flax_params(params)
    inferred = infer_qnavit_arch(flat)
    result = dict(inferred)
    if arch is not None:
        expected = _as_tuples(arch)
        diff = {k: (inferred[k], expected[k]) for k in inferred
                if k in expected and inferred[k] != expected[k]
                and not (k in ('msa_heads', 'window_sizes') and all(
                    d == 0 or a == b for d, a, b in zip(inferred['msa_depths'], inferred[k],
                                                         expected[k])))
                and not (k == 'qna_heads' and all(
                    a == b for a, b, d in zip(inferred[k], expected[k], _qna_used(inferred))
                    if d))}
        if diff:
            raise ValueError(f'Flax tree does not match arch {arch!r}: (tree, arch) = {diff}')
        result.update({k: v for k, v in expected.items() if k != 'drop_path_rate'})
    get = _Consumer(flat)
    state = {}
    num_stages = len(inferred['qna_depths'])
    stem = get('StemBlock_0/conv_1x1/kernel')
    state['backbone.stem.weight'] = _tensor(stem.transpose(3, 2, 0, 1))
    for s in range(num_stages):
        dims = inferred['embed_dims'] * 2**s
        hidden = dims * inferred['mlp_ratio']
        for i in range(inferred['msa_depths'][s]):
            state.update(_msa_block(get, f'LSAStage_{s}/MSA_Block_{i + 1}',
                                    f'backbone.stages.{s}.msa_blocks.{i}', dims,
                                    inferred['msa_heads'][s], inferred['window_sizes'][s], hidden))
        depth = inferred['qna_depths'][s]
        for i in range(depth):
            state.update(_qna_block(get, f'QnAStage_{s}/QnA_Block_{i + 1}',
                                    f'backbone.stages.{s}.qna_blocks.{i}', dims, dims,
                                    inferred['qna_heads'][s], hidden))
        if s < num_stages - 1:
            state.update(_qna_block(get, f'QnAStage_{s}/QnA_Block_{depth + 1}_stride_2',
                                    f'backbone.stages.{s}.downsample', dims, 2 * dims,
                                    2 * inferred['qna_heads'][s], 2 * hidden))
    last = num_stages - 1
    last_dims = inferred['embed_dims'] * 2**last
    state.update(_prefixed(f'backbone.norm{last}',
                           _layer_norm(get, 'ClassificationHead_0/LayerNorm_0', last_dims)))
    logits = 'ClassificationHead_0/head_logits'
    if with_head:
        kernel = get(f'{logits}/kernel')
        if kernel.ndim != 2 or kernel.shape[0] != last_dims:
            raise ValueError(f'{logits}/kernel must be ({last_dims}, num_classes), got '
                             f'{kernel.shape}')
        state['head.fc.weight'] = _tensor(kernel.T)
        state['head.fc.bias'] = _tensor(get(f'{logits}/bias', (kernel.shape[1], )))
        result['num_classes'] = int(kernel.shape[1])
    else:
        get.take_prefix(logits)
    leftover = get.leftover()
    if leftover:
        raise ValueError(f'{len(leftover)} Flax parameters were not converted: {leftover[:20]}')
    return state, result


def _qna_used(arch: dict) -> list:
    """Whether each stage has a QnA layer (stride-1 blocks or a downsampler)."""
    n = len(arch['qna_depths'])
    return [arch['qna_depths'][s] > 0 or s < n - 1 for s in range(n)]
