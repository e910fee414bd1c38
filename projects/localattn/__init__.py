"""localattn: local-attention vision backbones (NAT, DiNAT, QnA-ViT) for OpenMMLab 2.x.

The core, :mod:`localattn.ops` and :mod:`localattn.layers`, needs only torch and numpy
(``pip install localattn``). The backbones need the OpenMMLab stack (``pip install localattn[mm]``).

Importing the package

* always gives :mod:`~localattn.ops` and :mod:`~localattn.layers`;
* when mmengine and mmcv are importable, also imports :mod:`~localattn.backbones`, registers the
  layers and backbones in the MODELS registries of mmdet, mmseg and mmpretrain (libraries that are
  not installed are skipped with a warning), and installs the safe checkpoint loader
  (:mod:`localattn.checkpoint`), so Runner checkpoints load under torch >= 2.6 with
  ``weights_only=True``;
* when neither mmengine nor mmcv is installed, stops there: no backbones, nothing registered
  (:data:`REGISTERED` is empty, ``localattn.backbones`` is not imported). With only one of them
  installed it does the same and warns. An installed one that fails to import raises.

Configs load it with ``custom_imports = dict(imports=['localattn'], allow_failed_imports=False)``.
"""
import importlib
import importlib.util
import warnings

from . import layers, ops
from .version import __version__

#: What the backbones need beyond the core.
OPENMMLAB_CORE = ('mmengine', 'mmcv')


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a half-imported module
        return False


def _openmmlab_available() -> bool:
    """Whether the backbones' OpenMMLab dependencies are installed (and import)."""
    missing = [package for package in OPENMMLAB_CORE if not _installed(package)]
    if missing:
        if len(missing) < len(OPENMMLAB_CORE):
            from .registry import LocalattnImportWarning
            warnings.warn(f'{" and ".join(missing)} not installed: localattn.backbones are not imported '
                          f'(only localattn.ops and localattn.layers); pip install "localattn[mm]" for them.',
                          LocalattnImportWarning, stacklevel=3)
        return False
    for package in OPENMMLAB_CORE:
        try:
            importlib.import_module(package)
        except Exception as exc:  # installed but broken: never hide it behind a silent core-only import
            raise ImportError(f'{package} is installed but `import {package}` failed ({type(exc).__name__}: '
                              f'{exc}); fix it (see README "Installation") or uninstall it to use the '
                              f'torch-only core.') from exc
    return True


#: ``{library: [names]}`` of what ``import localattn`` registered.
REGISTERED = {}
__all__ = ['__version__', 'ops', 'layers', 'REGISTERED']

if _openmmlab_available():
    from . import backbones
    from .checkpoint import install as _install_safe_checkpoint_loader
    from .registry import register_modules

    _install_safe_checkpoint_loader()
    REGISTERED.update(register_modules([getattr(layers, name) for name in layers.__all__]
                                       + [getattr(backbones, name) for name in backbones.__all__]))
    __all__.append('backbones')
