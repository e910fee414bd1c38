"""Official NAT / DiNAT checkpoints -> :class:`localattn.backbones.NAT` / ``DiNAT``.

The official classification layout (SHI-Labs/Neighborhood-Attention-Transformer) is::

    patch_embed.proj.{0,1}.{weight,bias}   patch_embed.norm.*
    levels.{i}.blocks.{j}.{norm1, attn.qkv, attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma1, gamma2}
    levels.{i}.downsample.{reduction.weight, norm.*}      (i < last level)
    norm.{weight,bias}       head.{weight,bias}

The backbone keeps those names, so loading only needs to

1. unwrap ``state_dict`` / ``model`` and strip ``module.`` / ``backbone.`` prefixes,
2. drop ``head.*`` (classification head),
3. map the classifier's final ``norm.*`` to the last output norm ``norm{L-1}`` (when the model returns
   the last level; else it is reported as unused), and
4. resize each ``attn.rpb`` table ``[heads, 2k-1, 2k-1]`` bicubically when the kernel differs.

Output norms of the other levels (``norm0``..``norm{L-2}``) do not exist in a classification
checkpoint; they keep their init and are reported as "new output norms", not as missing keys.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['NATLoadReport', 'unwrap_state_dict', 'resize_rpb', 'official_to_backbone',
           'official_to_mmpretrain', 'load_nat_checkpoint', 'infer_arch']

_WRAPPER_KEYS = ('state_dict', 'model', 'model_ema', 'module')
_PREFIXES = ('module.', 'backbone.')
_LEVEL_RE = re.compile(r'^levels\.(\d+)\.')


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> 'OrderedDict[str, Tensor]':
    """Return the flat ``{name: tensor}`` of a checkpoint.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` (nested too) and strips leading ``module.``
    and ``backbone.`` prefixes (in any order) from every key. Non-tensor entries are dropped.
    """
    sd = unwrap_state_dict_raw(checkpoint)
    if not isinstance(sd, Mapping):
        raise ValueError(f'checkpoint is not a state dict (got {type(sd).__name__})')
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def resize_rpb(table: Tensor, kernel_size: int) -> Tensor:
    """Resize an RPB table ``[heads, 2k-1, 2k-1]`` to ``[heads, 2k'-1, 2k'-1]`` (bicubic per head)."""
    if table.dim() != 3 or table.shape[-1] != table.shape[-2] or table.shape[-1] % 2 == 0:
        raise ValueError(f'RPB table must be [heads, 2k-1, 2k-1], got {tuple(table.shape)}')
    size = 2 * kernel_size - 1
    if table.shape[-1] == size:
        return table
    resized = F.interpolate(table.float()[None], size=(size, size), mode='bicubic',
                            align_corners=False)[0]
    return resized.to(table.dtype)


def _num_levels(state_dict: Mapping[str, Tensor]) -> int:
    levels = [int(m.group(1)) for m in map(_LEVEL_RE.match, state_dict) if m]
    if not levels:
        raise ValueError('no `levels.{i}.*` keys: not a NAT/DiNAT checkpoint')
    return max(levels) + 1


def infer_arch(state_dict: Mapping[str, Tensor]) -> dict:
    """Read the architecture off an (unwrapped) official or backbone state dict.

    Returns:
        ``dict(embed_dims, depths, num_heads, mlp_ratio, layer_scale, kernel_size)`` plus
        ``num_classes`` (or None without ``head.weight``) and ``name`` (the matching preset of
        :data:`localattn.backbones.nat.NAT_ARCHS`, or None). Dilations are not stored in weights,
        so NAT and DiNAT checkpoints look the same.
    """
    sd = unwrap_state_dict(state_dict)
    num_levels = _num_levels(sd)
    depths, heads = [], []
    for i in range(num_levels):
        blocks = {int(k.split('.')[3]) for k in sd if k.startswith(f'levels.{i}.blocks.')}
        depths.append(max(blocks) + 1 if blocks else 0)
        rpb = sd.get(f'levels.{i}.blocks.0.attn.rpb')
        heads.append(int(rpb.shape[0]) if rpb is not None else None)
    embed_dims = int(sd['patch_embed.proj.1.weight'].shape[0])
    fc1 = sd['levels.0.blocks.0.mlp.fc1.weight']
    rpb = sd['levels.0.blocks.0.attn.rpb']
    spec = dict(embed_dims=embed_dims, depths=tuple(depths), num_heads=tuple(heads),
                mlp_ratio=fc1.shape[0] / fc1.shape[1],
                layer_scale='levels.0.blocks.0.gamma1' in sd,
                kernel_size=(int(rpb.shape[-1]) + 1) // 2)
    from ..backbones.nat import NAT_ARCHS
    spec['name'] = next((name for name, a in NAT_ARCHS.items()
                         if all(a[k] == spec[k] for k in ('embed_dims', 'depths', 'num_heads',
                                                          'mlp_ratio', 'kernel_size'))
                         and bool(a['layer_scale']) == spec['layer_scale']), None)
    head = sd.get('head.weight', sd.get('head.fc.weight'))
    spec['num_classes'] = int(head.shape[0]) if head is not None else None
    return spec


@dataclass
class NATLoadReport:
    """What :func:`load_nat_checkpoint` did. Key lists are backbone names."""
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    shape_mismatch: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    new_output_norms: List[str] = field(default_factory=list)
    renamed: Dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """No missing, unexpected or mismatched keys."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def format(self, source: str = 'checkpoint') -> str:
        def fmt(keys):
            return ', '.join(keys) if keys else 'none'
        lines = [f'NAT checkpoint load report ({source}):',
                 f'  missing keys: {fmt(self.missing)}',
                 f'  unexpected keys: {fmt(self.unexpected)}',
                 f'  resized RPB tables: {fmt(self.resized)}',
                 f'  skipped (shape mismatch): {fmt(self.shape_mismatch)}',
                 f'  ignored (classification head / unused): {fmt(self.ignored)}',
                 '  renamed: ' + (', '.join(f'{a} -> {b}' for a, b in self.renamed.items())
                                  or 'none'),
                 f'  new output norms (not in classification checkpoints, kept at init): '
                 f'{fmt(self.new_output_norms)}']
        return '\n'.join(lines)


def official_to_backbone(state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                         report: Optional[NATLoadReport] = None
                         ) -> Tuple['OrderedDict[str, Tensor]', NATLoadReport]:
    """Map an (unwrapped) official or mmpretrain state dict onto a backbone's ``state_dict()``.

    Args:
        state_dict: output of :func:`unwrap_state_dict`.
        model_state: the target backbone's ``state_dict()`` (names and shapes).

    Returns:
        the state dict to load (shapes match ``model_state``) and the report (``missing`` and
        ``unexpected`` filled by the caller from ``load_state_dict``).
    """
    report = report or NATLoadReport()
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    output_norms = sorted({m.group(1) for m in map(re.compile(r'^(norm\d+)\.').match, model_state)
                           if m})
    last_norm = None
    if any(k.startswith('levels.') for k in model_state):
        last = max(int(m.group(1)) for m in map(_LEVEL_RE.match, model_state) if m)
        last_norm = f'norm{last}' if f'norm{last}' in output_norms else None
    for key, value in state_dict.items():
        if key.startswith(('head.', 'neck.')):
            report.ignored.append(key)
            continue
        if key.startswith('norm.'):
            if last_norm is None or any(k.startswith(last_norm + '.') for k in state_dict):
                report.ignored.append(key)
                continue
            new_key = last_norm + key[len('norm'):]
            report.renamed[key] = new_key
            key = new_key
        target = model_state.get(key)
        if target is not None and tuple(value.shape) != tuple(target.shape):
            if key.endswith('attn.rpb') and value.dim() == 3 and value.shape[0] == target.shape[0]:
                report.resized.append(f'{key} {tuple(value.shape)} -> {tuple(target.shape)}')
                value = resize_rpb(value, (target.shape[-1] + 1) // 2)
            else:
                report.shape_mismatch.append(
                    f'{key} (checkpoint {tuple(value.shape)}, model {tuple(target.shape)})')
                continue
        out[key] = value
    present = {k.split('.')[0] for k in out}
    report.new_output_norms = [n for n in output_norms if n not in present]
    return out, report


def official_to_mmpretrain(state_dict: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """Official classification checkpoint -> mmpretrain ``ImageClassifier`` state dict.

    ``backbone.<same names>``, ``backbone.norm{L-1}.*`` from ``norm.*`` and ``head.fc.*`` from
    ``head.*`` (``LinearClsHead``), for a backbone with ``out_indices=(L-1,)``.
    """
    sd = unwrap_state_dict(state_dict)
    last = _num_levels(sd) - 1
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


def load_nat_checkpoint(model: nn.Module, checkpoint: Any, prefix: Optional[str] = None,
                        map_location: str = 'cpu') -> NATLoadReport:
    """Load an official / mmpretrain / backbone checkpoint into a NAT or DiNAT ``model``.

    Args:
        model: the backbone.
        checkpoint: a local path (loaded with mmengine's ``CheckpointLoader``, which ``import localattn``
            routes through the ``weights_only=True`` loader) or an already loaded dict.
        prefix: optional key prefix to select first (e.g. ``'backbone.'``), as mmengine's
            ``Pretrained`` init; by default ``module.``/``backbone.`` are stripped anyway.

    Returns:
        the :class:`NATLoadReport`; ``missing`` excludes output norms a classification checkpoint
        cannot contain (listed in ``new_output_norms``).
    """
    if isinstance(checkpoint, str):
        if '://' in checkpoint:
            raise ValueError(f'only local checkpoint paths are supported, got {checkpoint!r}')
        from mmengine.runner.checkpoint import CheckpointLoader
        checkpoint = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    if prefix:
        raw = unwrap_state_dict_raw(checkpoint)
        checkpoint = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        if not checkpoint:
            raise ValueError(f'no key of the checkpoint starts with prefix {prefix!r}')
    state_dict = unwrap_state_dict(checkpoint)
    model_state = model.state_dict()
    mapped, report = official_to_backbone(state_dict, model_state)
    result = model.load_state_dict(mapped, strict=False)
    new_norms = tuple(n + '.' for n in report.new_output_norms)
    report.missing = [k for k in result.missing_keys if not k.startswith(new_norms)]
    report.unexpected = list(result.unexpected_keys)
    return report


def unwrap_state_dict_raw(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The innermost ``state_dict``/``model`` mapping, keys unchanged."""
    sd: Any = checkpoint
    while isinstance(sd, Mapping):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, Tensor) for v in sd.values()):
            break
        sd = inner
    return sd
