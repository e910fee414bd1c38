"""The official release's other classification layouts (DiNAT_s, isotropic NAT/DiNAT) -> our backbones.

The SHI-Labs release has three checkpoint layouts; the first key of each tells them apart
(:func:`detect_layout`)::

    'nat'        NAT / DiNAT (incl. DiNAT-Large)   levels.{i}.blocks.{j}.*, levels.{i}.downsample.*
    'dinats'     DiNAT_s (Swin skeleton)           layers.{i}.blocks.{j}.*, layers.{i}.downsample.{reduction,norm}.*
    'isotropic'  isotropic NAT / DiNAT             layers.{j}.{norm1,attn.*,norm2,mlp.*}

all with ``patch_embed.*``, ``norm.*`` (the classifier's final LayerNorm) and ``head.*``; every
block holds ``norm1, attn.qkv (Linear C -> 3C, output ordered (q|k|v, head, head_dim)),
attn.rpb [heads, 2k-1, 2k-1], attn.proj, norm2, mlp.fc1, mlp.fc2``. :class:`~localattn.backbones.DiNATs`
and :class:`~localattn.backbones.IsotropicNAT` / ``IsotropicDiNAT`` keep those names, so loading
(:func:`dinats_to_backbone`, :func:`isotropic_to_backbone`, the ``adapt`` step of
:func:`localattn.checkpoint.load_weights`) only

1. drops ``head.*`` and ``neck.*`` (reported as ignored),
2. maps ``norm.*`` to the output norm of the last stage (``norm{L-1}``; for the isotropic models the
   last block) when the model returns it (else it is ignored), and
3. declares the other output norms, which a classification checkpoint cannot hold, as new.

mmpretrain checkpoints (``backbone.*``, ``head.fc.*``) and detector / segmentor checkpoints of these
backbones already carry our names and pass through. A checkpoint of another family's layout raises
a ValueError naming the class to build. Unwrapping, RPB resizing (kernel 7 <-> 11, bicubic) and the
load report are :mod:`localattn.checkpoint`'s. Pure torch: nothing here imports the backbones.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Optional

from torch import Tensor

from ..checkpoint import LoadReport, unwrap_state_dict

__all__ = ['LAYOUTS', 'detect_layout', 'dinats_to_backbone', 'isotropic_to_backbone',
           'classifier_to_backbone', 'to_mmpretrain', 'infer_arch']

#: Layout name -> (regex of its block keys, group 1 = stage / block index; the classes that load it).
LAYOUTS = {
    'nat': (re.compile(r'^levels\.(\d+)\.'), "'NAT' / 'DiNAT'"),
    'dinats': (re.compile(r'^layers\.(\d+)\.(?:blocks|downsample)\.'), "'DiNATs'"),
    'isotropic': (re.compile(r'^layers\.(\d+)\.(?:norm1|norm2|attn|mlp|gamma1|gamma2)\b'),
                  "'IsotropicNAT' / 'IsotropicDiNAT'"),
}
_NORM_RE = re.compile(r'^(norm\d+)\.')


def _strip_backbone(keys: Iterable[str]) -> Iterable[str]:
    return (k[len('backbone.'):] if k.startswith('backbone.') else k for k in keys)


def detect_layout(keys: Iterable[str]) -> Optional[str]:
    """``'nat'``, ``'dinats'`` or ``'isotropic'`` (see the module docstring) for the keys of a state
    dict (a leading ``backbone.`` is ignored), or None when none matches."""
    keys = list(_strip_backbone(keys))
    for name, (pattern, _) in LAYOUTS.items():
        if any(pattern.match(k) for k in keys):
            return name
    return None


def _num_stages(keys: Iterable[str], layout: str) -> int:
    pattern = LAYOUTS[layout][0]
    indices = [int(m.group(1)) for m in map(pattern.match, keys) if m]
    if not indices:
        raise ValueError(f'no keys of the {layout!r} layout')
    return max(indices) + 1


def classifier_to_backbone(state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                           report: LoadReport, layout: str) -> 'OrderedDict[str, Tensor]':
    """Map an unwrapped checkpoint of ``layout`` (official, mmpretrain or downstream) onto a backbone's
    names (see the module docstring); renames, ignored keys and new norms go to ``report``.

    Raises:
        ValueError: the checkpoint has another family's layout.
    """
    found = detect_layout(state_dict)
    if found is not None and found != layout:
        raise ValueError(f'this checkpoint has the {found!r} layout (keys like '
                         f'{next(k for k in state_dict if LAYOUTS[found][0].match(k))!r}): load it '
                         f'into type={LAYOUTS[found][1]}; this model ({LAYOUTS[layout][1]}) expects '
                         f'the {layout!r} layout')
    output_norms = sorted({m.group(1) for m in map(_NORM_RE.match, model_state) if m},
                          key=lambda n: int(n[4:]))
    last_norm: Optional[str] = f'norm{_num_stages(model_state, layout) - 1}'
    if last_norm not in output_norms or any(k.startswith(f'{last_norm}.') for k in state_dict):
        last_norm = None  # not returned by the model, or the checkpoint has it under its own name
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith(('head.', 'neck.')) or (key.startswith('norm.') and last_norm is None):
            report.ignored.append(key)
            continue
        if key.startswith('norm.'):
            report.renamed[key] = last_norm + key[len('norm'):]
            key = report.renamed[key]
        out[key] = value
    present = {k.split('.')[0] for k in out}
    report.new.extend(n for n in output_norms if n not in present)
    return out


def dinats_to_backbone(state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                       report: LoadReport) -> 'OrderedDict[str, Tensor]':
    """:func:`classifier_to_backbone` for the DiNAT_s layout (``DiNATs.adapt_checkpoint``)."""
    return classifier_to_backbone(state_dict, model_state, report, 'dinats')


def isotropic_to_backbone(state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                          report: LoadReport) -> 'OrderedDict[str, Tensor]':
    """:func:`classifier_to_backbone` for the isotropic layout (``IsotropicNAT.adapt_checkpoint``)."""
    return classifier_to_backbone(state_dict, model_state, report, 'isotropic')


def to_mmpretrain(state_dict: Mapping[str, Any]) -> 'OrderedDict[str, Tensor]':
    """An official classification checkpoint of any of the three layouts -> mmpretrain
    ``ImageClassifier`` state dict: ``backbone.<same names>``, ``backbone.norm{L-1}.*`` from
    ``norm.*`` (L stages, or blocks for the isotropic layout) and ``head.fc.*`` from ``head.*``
    (``LinearClsHead``), for a backbone that returns only its last stage (the default of the
    isotropic classes, ``out_indices=(3,)`` for the others)."""
    sd = unwrap_state_dict(state_dict)
    layout = detect_layout(sd)
    if layout is None:
        raise ValueError(f'not an official NAT-release checkpoint: no levels.* / layers.* keys '
                         f'(first keys: {list(sd)[:5]})')
    last = _num_stages(sd, layout) - 1
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    for key, value in sd.items():
        if key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value.clone()
        elif key.startswith('norm.'):
            out[f'backbone.norm{last}.' + key[len('norm.'):]] = value.clone()
        else:
            out['backbone.' + key] = value.clone()
    for name in ('head.fc.weight', 'head.fc.bias', f'backbone.norm{last}.weight'):
        if name not in out:
            raise ValueError(f'not an official classification checkpoint: no {name} source key')
    return out


def infer_arch(state_dict: Mapping[str, Any]) -> dict:
    """Read the architecture off a DiNAT_s or isotropic checkpoint (official, mmpretrain or backbone).

    Returns:
        ``dict(layout, embed_dims, depths | depth, num_heads, mlp_ratio, kernel_size, patch_size,
        num_classes)`` (``num_classes`` None without a head). Dilations are not stored in weights.
    """
    sd = OrderedDict(zip(_strip_backbone(unwrap_state_dict(state_dict, prefix='')),
                         unwrap_state_dict(state_dict, prefix='').values()))
    layout = detect_layout(sd)
    if layout not in ('dinats', 'isotropic'):
        raise ValueError(f'not a DiNAT_s or isotropic checkpoint (layout {layout!r})')
    proj = sd['patch_embed.proj.weight']
    spec: dict = dict(layout=layout, embed_dims=int(proj.shape[0]), patch_size=int(proj.shape[-1]))
    if layout == 'dinats':
        depths, heads = [], []
        for i in range(_num_stages(sd, layout)):
            blocks = {int(k.split('.')[3]) for k in sd if k.startswith(f'layers.{i}.blocks.')}
            depths.append(max(blocks) + 1 if blocks else 0)
            heads.append(int(sd[f'layers.{i}.blocks.0.attn.rpb'].shape[0]))
        first = 'layers.0.blocks.0.'
        spec.update(depths=tuple(depths), num_heads=tuple(heads))
    else:
        first = 'layers.0.'
        spec.update(depth=_num_stages(sd, layout), num_heads=int(sd[first + 'attn.rpb'].shape[0]))
    fc1 = sd[first + 'mlp.fc1.weight']
    spec.update(mlp_ratio=fc1.shape[0] / fc1.shape[1],
                kernel_size=(int(sd[first + 'attn.rpb'].shape[-1]) + 1) // 2)
    head = sd.get('head.weight', sd.get('head.fc.weight'))
    spec['num_classes'] = int(head.shape[0]) if head is not None else None
    return spec
