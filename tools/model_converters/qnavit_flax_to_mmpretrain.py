"""Convert an official QnA-ViT Flax checkpoint (msgpack) into an mmpretrain checkpoint.

Usage::

    python tools/model_converters/qnavit_flax_to_mmpretrain.py SRC DST [--arch tiny] [--key params]

``SRC`` is a file written by flax's checkpoint utilities (``flax.serialization.to_bytes`` of the
train state: msgpack). The parameters are found under ``params`` (flax ``TrainState``), ``target``
(legacy ``flax.optim.Optimizer``), ``optimizer/target`` or at the top level; ``--key a/b`` picks a
subtree explicitly (e.g. EMA weights). ``DST`` gets ``{'state_dict': {'backbone.*', 'head.fc.*'},
'meta': {...}}`` for an ``ImageClassifier`` with ``QnAViT(arch=..., out_indices=(3,))``, a
``GlobalAveragePooling`` neck and a ``LinearClsHead``; the arch read off the tree is printed.

Needs ``msgpack`` (``pip install msgpack``); no JAX/Flax. The decoder follows flax's
serialization format: ndarrays are msgpack ``ExtType(1, packb((shape, dtype_name, C-order bytes)))``,
numpy scalars ``ExtType(3, same)``, complex scalars ``ExtType(2, packb((real, imag)))``, and arrays
above 2**30 bytes are stored as ``{'__msgpack_chunked_array__': True, 'shape': {'0': ...},
'chunks': {'0': flat_part, ...}}``. bfloat16 arrays are widened to float32.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import Any, Optional

import numpy as np

try:
    import localattn  # noqa: F401  (installed package)
except ImportError:  # running from a source checkout
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                                'projects'))

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
#: Where trees saved by common flax training loops keep the model parameters, tried in order.
PARAM_PATHS = ('params', 'target', 'optimizer/target', 'params/params', 'target/params',
               'optimizer/target/params', 'model/params')


def _import_msgpack():
    try:
        import msgpack
    except ImportError as exc:
        raise ImportError('reading Flax checkpoints needs the optional dependency `msgpack` '
                          '(pip install msgpack)') from exc
    return msgpack


def _decode_array(msgpack, data: bytes) -> np.ndarray:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    dtype_name = dtype_name.decode('ascii') if isinstance(dtype_name, bytes) else dtype_name
    if dtype_name == 'bfloat16':
        bits = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16
        array = bits.view(np.float32)
    else:
        array = np.frombuffer(buffer, dtype=np.dtype(dtype_name))
    return array.reshape(tuple(shape), order='C').copy()  # writable, detached from the buffer


def _unchunk(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree.get('__msgpack_chunked_array__'):
            shape = tuple(tree['shape'][str(i)] for i in range(len(tree['shape'])))
            chunks = [tree['chunks'][str(i)] for i in range(len(tree['chunks']))]
            return np.concatenate([np.ravel(c) for c in chunks]).reshape(shape)
        return {key: _unchunk(value) for key, value in tree.items()}
    return tree


def load_flax_msgpack(data: bytes) -> dict:
    """Decode the bytes of a flax msgpack checkpoint into nested dicts of numpy arrays."""
    msgpack = _import_msgpack()

    def ext_hook(code: int, payload: bytes):
        if code == EXT_NDARRAY:
            return _decode_array(msgpack, payload)
        if code == EXT_NPSCALAR:
            return _decode_array(msgpack, payload)[()]
        if code == EXT_COMPLEX:
            real, imag = msgpack.unpackb(payload)
            return complex(real, imag)
        return msgpack.ExtType(code, payload)

    tree = msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    if not isinstance(tree, dict):
        raise ValueError(f'expected a msgpack map at the top level, got {type(tree).__name__}')
    return _unchunk(tree)


def _at(tree: dict, path: str) -> Optional[dict]:
    node = tree
    for part in path.split('/'):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def find_params(tree: dict, key: Optional[str] = None) -> dict:
    """The QnA-ViT parameter subtree (the dict holding ``StemBlock_0``)."""
    if key is not None:
        node = _at(tree, key.strip('/'))
        if node is None:
            raise KeyError(f'no subtree {key!r} in the checkpoint (top-level keys: {sorted(tree)})')
        if 'StemBlock_0' not in node and isinstance(node.get('params'), dict):
            node = node['params']
        return node
    if 'StemBlock_0' in tree:
        return tree
    for path in PARAM_PATHS:
        node = _at(tree, path)
        if node is not None and 'StemBlock_0' in node:
            return node
    raise KeyError(f'could not find the QnA-ViT parameters (a dict with StemBlock_0) under '
                   f'{list(PARAM_PATHS)}; top-level keys: {sorted(tree)}. Pass --key.')


def convert_file(src: str, dst: str, arch: Optional[str] = None, key: Optional[str] = None,
                 with_head: bool = True) -> dict:
    """Convert ``src`` (flax msgpack) to ``dst`` (torch), checked against the preset ``arch`` when
    given; returns the arch dict."""
    import torch

    from localattn.backbones import QnAViT
    from localattn.converters.qnavit_flax import convert_qnavit_flax

    with open(src, 'rb') as f:
        tree = load_flax_msgpack(f.read())
    state_dict, arch_cfg = convert_qnavit_flax(
        find_params(tree, key), arch=QnAViT.resolve_arch(arch) if arch else None,
        with_head=with_head)
    meta = dict(source=osp.basename(src), arch={k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in arch_cfg.items()})
    torch.save(dict(state_dict=state_dict, meta=meta), dst)
    return arch_cfg


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='flax msgpack checkpoint')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--arch', default=None,
                        help="check the tree against a QnAViT arch ('tiny', 'tiny-7x7', 'small', "
                             "'base')")
    parser.add_argument('--key', default=None, help="subtree holding the params, e.g. 'params'")
    parser.add_argument('--no-head', action='store_true',
                        help='drop the classifier (backbone only)')
    args = parser.parse_args(argv)
    arch = convert_file(args.src, args.dst, arch=args.arch, key=args.key,
                        with_head=not args.no_head)
    num_classes = arch.pop('num_classes', None)
    print(f'saved {args.dst}')
    arch_repr = repr(args.arch) if args.arch else repr(arch)
    last = len(arch['qna_depths']) - 1
    print(f"backbone: dict(type='QnAViT', arch={arch_repr}, out_indices=({last},))")
    if num_classes is not None:
        print(f'head: LinearClsHead(num_classes={num_classes}, in_channels='
              f'{arch["embed_dims"] * 2**last})')


if __name__ == '__main__':
    main()
