"""Official NAT / DiNAT checkpoints -> :class:`localattn.backbones.NAT` / ``DiNAT`` and mmpretrain.

The official classification layout (SHI-Labs/Neighborhood-Attention-Transformer) is::

    patch_embed.proj.{0,1}.{weight,bias}   patch_embed.norm.*
    levels.{i}.blocks.{j}.{norm1, attn.qkv, attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma1, gamma2}
    levels.{i}.downsample.{reduction.weight, norm.*}      (i < last level)
    norm.{weight,bias}       head.{weight,bias}

The backbone keeps those names, so loading it (:func:`official_to_backbone`, the ``adapt`` step of
:func:`localattn.checkpoint.load_weights`) only needs to

1. drop ``head.*`` (classification head) and ``neck.*``,
2. map the classifier's final ``norm.*`` to the last output norm ``norm{L-1}`` (when the model returns
   the last level; else it is reported as ignored), and
3. declare the other output norms (``norm0``..``norm{L-2}``), which a classification checkpoint
   cannot hold, as new: they keep their init and are not reported as missing.

Unwrapping, RPB resizing (when the kernel differs) and the report are the checkpoint module's.
Pure torch: nothing here imports the backbones.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Mapping, Optional

from torch import Tensor, nn

from ..checkpoint import LoadReport, load_weights, unwrap_state_dict
from .official import classifier_to_backbone, detect_layout, to_mmpretrain

__all__ = ['official_to_backbone', 'official_to_mmpretrain', 'load_nat_checkpoint', 'infer_arch']

_LEVEL_RE = re.compile(r'^levels\.(\d+)\.')
#: The arch keys :func:`infer_arch` reads off the weights (what a preset must match).
ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'mlp_ratio', 'kernel_size')


def _num_levels(keys) -> int:
    levels = [int(m.group(1)) for m in map(_LEVEL_RE.match, keys) if m]
    if not levels:
        raise ValueError('no `levels.{i}.*` keys: not a NAT/DiNAT checkpoint')
    return max(levels) + 1


def infer_arch(state_dict: Mapping[str, Any], presets: Optional[Mapping[str, dict]] = None) -> dict:
    """Read the architecture off an official, mmpretrain or backbone state dict (wrapped or not).

    Args:
        state_dict: the checkpoint.
        presets: optional ``{name: arch}`` (e.g. ``NAT.arch_zoo``) to name the matching preset.

    Returns:
        ``dict(embed_dims, depths, num_heads, mlp_ratio, layer_scale, kernel_size)`` plus
        ``num_classes`` (or None without a head) and ``name`` (the matching preset, or None).
        Dilations are not stored in weights, so NAT and DiNAT checkpoints look the same.
    """
    raw = unwrap_state_dict(state_dict, prefix='')  # every key, head included
    sd = OrderedDict((k[len('backbone.'):] if k.startswith('backbone.') else k, v)
                     for k, v in raw.items())
    depths, heads = [], []
    for i in range(_num_levels(sd)):
        blocks = {int(k.split('.')[3]) for k in sd if k.startswith(f'levels.{i}.blocks.')}
        depths.append(max(blocks) + 1 if blocks else 0)
        rpb = sd.get(f'levels.{i}.blocks.0.attn.rpb')
        heads.append(int(rpb.shape[0]) if rpb is not None else None)
    fc1 = sd['levels.0.blocks.0.mlp.fc1.weight']
    spec = dict(embed_dims=int(sd['patch_embed.proj.1.weight'].shape[0]), depths=tuple(depths),
                num_heads=tuple(heads), mlp_ratio=fc1.shape[0] / fc1.shape[1],
                layer_scale='levels.0.blocks.0.gamma1' in sd,
                kernel_size=(int(sd['levels.0.blocks.0.attn.rpb'].shape[-1]) + 1) // 2)
    spec['name'] = next((name for name, arch in (presets or {}).items()
                         if all(arch[k] == spec[k] for k in ARCH_KEYS)
                         and bool(arch['layer_scale']) == spec['layer_scale']), None)
    head = sd.get('head.weight', sd.get('head.fc.weight'))
    spec['num_classes'] = int(head.shape[0]) if head is not None else None
    return spec


def official_to_backbone(state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                         report: LoadReport) -> 'OrderedDict[str, Tensor]':
    """Map an unwrapped official / mmpretrain / backbone state dict onto a backbone's names.

    Args:
        state_dict: the unwrapped checkpoint (``levels.*``, ``norm.*``, ``head.*``, ...).
        model_state: the target backbone's ``state_dict()`` (its names tell the output norms).
        report: receives the renamed and ignored keys and the new output norms.

    Returns:
        the state dict under the backbone's names (shapes are matched by the caller).

    Raises:
        ValueError: the checkpoint has the DiNAT_s or isotropic layout (``layers.*``); the message
            names the class to build (:func:`localattn.converters.official.classifier_to_backbone`,
            which implements this mapping for every layout of the release).
    """
    return classifier_to_backbone(state_dict, model_state, report, 'nat')


def official_to_mmpretrain(state_dict: Mapping[str, Any]) -> 'OrderedDict[str, Tensor]':
    """Official NAT / DiNAT classification checkpoint -> mmpretrain ``ImageClassifier`` state dict.

    ``backbone.<same names>``, ``backbone.norm{L-1}.*`` from ``norm.*`` and ``head.fc.*`` from
    ``head.*`` (``LinearClsHead``), for a backbone with ``out_indices=(L-1,)``: the ``'nat'`` layout
    of :func:`localattn.converters.official.to_mmpretrain`, which serves every layout of the release.
    """
    if detect_layout(unwrap_state_dict(state_dict)) != 'nat':
        raise ValueError('no `levels.{i}.*` keys: not a NAT/DiNAT checkpoint')
    return to_mmpretrain(state_dict)


def load_nat_checkpoint(model: nn.Module, checkpoint: Any, prefix: Optional[str] = None,
                        map_location: str = 'cpu') -> LoadReport:
    """Load an official / mmpretrain / backbone checkpoint into a NAT or DiNAT ``model``
    (:func:`~localattn.checkpoint.load_weights` with :func:`official_to_backbone`); what
    ``NAT.load_pretrained`` and ``init_cfg=dict(type='Pretrained', ...)`` do, without the log."""
    return load_weights(model, checkpoint, prefix=prefix, adapt=official_to_backbone,
                        map_location=map_location)
