"""Convert one Flax QnA layer (``FusedKQnA``) of the official QnA-ViT release into a ``QnA2d`` state dict.

Flax layout of one layer (``L`` queries, ``h`` heads, ``d = C_out / h``, window ``k``):

==========================  ======================  ==========================================
Flax name                   Flax shape              ``QnA2d`` parameter
==========================  ======================  ==========================================
``query``                   ``(L, C_out)``          ``query`` ``[L, C]`` (C ordered (head, dim))
``Wk``                      ``(C_in, C_out)``       ``key.weight`` = transpose
``to_v/kernel``             ``(C_in, C_out)``       ``value.weight`` = transpose
``to_out/kernel``           ``(C_out, C_out)``      ``proj.weight`` = transpose
``rpe_bias``                ``(k*k, L*h)``          ``rpb`` ``[L, h, k, k]``
``attn_scale_weights``      ``(1, 1, k*k, L*h)``    ``attn_scale`` ``[L, h, k, k]``
==========================  ======================  ==========================================

Dense kernels are ``(in, out)``; the ``k*k`` axis is row-major over the window offset ``(dy, dx)``; the
``L*h`` axis is ordered (query, head). The Flax layer L2-normalises the query per (query, head) and
divides it by ``sqrt(d)``, exactly as ``QnA2d`` does, so ``query`` is copied unchanged. No JAX needed.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ['QNA_FLAX_NAMES', 'flatten_flax_params', 'convert_qna_layer']

#: The flat Flax names of one QnA layer, all required.
QNA_FLAX_NAMES = ('query', 'Wk', 'to_v/kernel', 'to_out/kernel', 'rpe_bias', 'attn_scale_weights')


def flatten_flax_params(params: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
    """Flatten a nested Flax parameter tree into ``{'a/b/c': array}`` (already flat keys pass through)."""
    flat: dict[str, np.ndarray] = {}
    for name, leaf in params.items():
        path = f'{prefix}{name}'
        if isinstance(leaf, Mapping):
            flat.update(flatten_flax_params(leaf, prefix=f'{path}/'))
        else:
            flat[path] = np.asarray(leaf)
    return flat


def _select_layer(params: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """The layer's six arrays under ``prefix``; ``ValueError`` on missing or unexpected names."""
    flat = flatten_flax_params(params)
    if prefix and not prefix.endswith('/'):
        prefix += '/'
    layer = {name[len(prefix):]: array for name, array in flat.items() if name.startswith(prefix)}
    missing = [name for name in QNA_FLAX_NAMES if name not in layer]
    unexpected = sorted(set(layer) - set(QNA_FLAX_NAMES))
    if missing or unexpected:
        raise ValueError(f'params under prefix {prefix!r} must hold exactly {QNA_FLAX_NAMES}; '
                         f'missing {missing}, unexpected {unexpected}')
    return layer


def _window_table(table: np.ndarray, num_queries: int, num_heads: int, name: str) -> torch.Tensor:
    """``(k*k, L*h)`` (row-major offsets, (query, head) columns) -> ``[L, h, k, k]`` float32."""
    window_area = table.shape[0]
    kernel_size = math.isqrt(window_area)
    if table.ndim != 2 or kernel_size * kernel_size != window_area \
            or table.shape[1] != num_queries * num_heads:
        raise ValueError(f'{name} must be (k*k, L*h) = (k*k, {num_queries * num_heads}), '
                         f'got {table.shape}')
    table = table.reshape(kernel_size, kernel_size, num_queries, num_heads).transpose(2, 3, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))


def _linear_weight(kernel: np.ndarray, shape: tuple[int, int], name: str) -> torch.Tensor:
    """Flax Dense kernel ``(in, out)`` -> ``nn.Linear.weight`` ``[out, in]`` float32."""
    if kernel.shape != shape:
        raise ValueError(f'{name} must have shape {shape}, got {kernel.shape}')
    return torch.from_numpy(np.ascontiguousarray(kernel.T, dtype=np.float32))


def convert_qna_layer(params: Mapping[str, Any], num_heads: int,
                      prefix: str = '') -> dict[str, torch.Tensor]:
    """Map one Flax QnA layer to the state dict of ``QnA2d(C_in, C_out, num_heads, k, stride, L)``.

    Args:
        params: flat ``{'query': ..., 'Wk': ..., 'to_v/kernel': ..., ...}`` numpy arrays (the contract);
            a nested tree, or a bigger tree with ``prefix`` naming the layer, is accepted too.
        num_heads: heads ``h`` of the layer (not recoverable from the shapes).
        prefix: path of the layer inside ``params``, e.g. ``'QnAStage_0/QnA_Block_1/FusedKQnA_0'``.

    Returns:
        ``{'query', 'key.weight', 'value.weight', 'proj.weight', 'rpb', 'attn_scale'}`` float32 tensors;
        ``kernel_size = sqrt(rpe_bias.shape[0])`` and ``num_queries = query.shape[0]``.
    """
    layer = _select_layer(params, prefix)
    query = layer['query']
    if query.ndim != 2 or query.shape[1] % num_heads != 0:
        raise ValueError(f'query must be (L, C_out) with C_out divisible by num_heads={num_heads}, '
                         f'got {query.shape}')
    num_queries, out_channels = query.shape
    in_channels = layer['Wk'].shape[0]
    scale = layer['attn_scale_weights']
    if scale.ndim != 4 or scale.shape[:2] != (1, 1):
        raise ValueError(f'attn_scale_weights must be (1, 1, k*k, L*h), got {scale.shape}')
    return {
        'query': torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)),
        'key.weight': _linear_weight(layer['Wk'], (in_channels, out_channels), 'Wk'),
        'value.weight': _linear_weight(layer['to_v/kernel'], (in_channels, out_channels), 'to_v/kernel'),
        'proj.weight': _linear_weight(layer['to_out/kernel'], (out_channels, out_channels),
                                      'to_out/kernel'),
        'rpb': _window_table(layer['rpe_bias'], num_queries, num_heads, 'rpe_bias'),
        'attn_scale': _window_table(scale[0, 0], num_queries, num_heads, 'attn_scale_weights'),
    }
