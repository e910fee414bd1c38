"""localattn: local-attention vision backbones (NAT, DiNAT, QnA-ViT) for OpenMMLab 2.x.

Importing the package

* registers the layers and backbones in the MODELS registries of mmdet, mmseg and mmpretrain
  (libraries that are not installed are skipped with a warning), and
* installs the safe checkpoint loader (:mod:`localattn.checkpoint`), so Runner checkpoints load
  under torch >= 2.6 with ``weights_only=True``.

Configs load it with ``custom_imports = dict(imports=['localattn'], allow_failed_imports=False)``.
"""
from . import backbones, layers, ops
from .checkpoint import install as _install_safe_checkpoint_loader
from .registry import register_modules
from .version import __version__

_install_safe_checkpoint_loader()
#: ``{library: [names]}`` of what ``import localattn`` registered.
REGISTERED = register_modules([getattr(layers, name) for name in layers.__all__]
                              + [getattr(backbones, name) for name in backbones.__all__])

__all__ = ['__version__', 'ops', 'layers', 'backbones', 'REGISTERED']
