"""Register localattn modules in the MODELS registries of mmdet, mmseg and mmpretrain.

One class can live in several registries (each keeps its own table), so the same backbone is
reachable from an mmdet, mmseg or mmpretrain config (``default_scope`` picks the registry).

A library that is not installed is skipped with a warning; a library that is installed but fails
to import (version clash, missing undeclared dependency, ...) raises, so a broken environment is
never hidden behind a missing registration.
"""
import importlib
import importlib.util
import warnings
from typing import Dict, Iterable, List, Type

from torch import nn

#: (package, module holding its MODELS registry)
DOWNSTREAM_REGISTRIES = (
    ('mmdet', 'mmdet.registry'),
    ('mmseg', 'mmseg.registry'),
    ('mmpretrain', 'mmpretrain.registry'),
)


class LocalattnImportWarning(UserWarning):
    """Warned when an optional OpenMMLab library is absent and its registry is skipped."""


def _load_registry(package: str, registry_module: str):
    """Return ``<registry_module>.MODELS`` or None when ``package`` is not installed."""
    try:
        installed = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a half-imported module
        installed = False
    if not installed:
        warnings.warn(
            f'{package} is not installed: localattn modules are not registered in its MODELS '
            f'registry (install it to use localattn in {package} configs).',
            LocalattnImportWarning, stacklevel=3)
        return None
    try:
        return importlib.import_module(registry_module).MODELS
    except Exception as exc:  # an installed library that cannot be imported is an error
        raise ImportError(
            f'{package} is installed but `import {registry_module}` failed ({type(exc).__name__}: '
            f'{exc}); localattn cannot register its modules there. Fix the {package} installation '
            f'(see README "Installation").') from exc


def register_modules(modules: Iterable[Type[nn.Module]]) -> Dict[str, List[str]]:
    """Register ``modules`` in every available downstream MODELS registry.

    Args:
        modules: ``nn.Module`` classes, registered under their class names.

    Returns:
        ``{package: [registered names]}`` for each library whose registry was available.
    """
    modules = list(modules)
    registered = {}
    for package, registry_module in DOWNSTREAM_REGISTRIES:
        registry = _load_registry(package, registry_module)
        if registry is None:
            continue
        for module in modules:
            # force=True keeps re-imports (e.g. importlib.reload in notebooks) idempotent.
            registry.register_module(module=module, force=True)
        registered[package] = [m.__name__ for m in modules]
    return registered
