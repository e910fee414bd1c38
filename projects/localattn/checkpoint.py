"""Safe checkpoint loading for torch >= 2.6 without turning ``weights_only`` off.

mmengine 0.10 calls ``torch.load`` without ``weights_only``; on torch >= 2.6 that means
``weights_only=True`` and every checkpoint the Runner saves fails to load, because it pickles
mmengine ``HistoryBuffer`` objects and numpy arrays/scalars in its ``message_hub``. The usual
work-around (``weights_only=False``) lets a checkpoint run arbitrary code. Instead, importing
``localattn`` calls :func:`install`, which

1. allow-lists exactly the types that Runner checkpoints contain (:data:`SAFE_GLOBALS`), and
2. replaces mmengine's local-file checkpoint loader with :func:`load_local_checkpoint`, which
   loads with ``weights_only=True`` and turns a refused checkpoint into an
   :class:`UnsafeCheckpointError` that says what was refused and how to load the file if trusted.

``--resume``, ``load_from``, ``tools/test.py CONFIG CHECKPOINT`` and
``init_cfg=dict(type='Pretrained', checkpoint=...)`` all go through that loader.
"""
import os.path as osp
import pickle
from typing import Any, Callable, List, Optional

import numpy as np
import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects outside the allow-list and was not loaded."""


def _numpy_reconstruct() -> Callable:
    """numpy's array unpickling helper (``numpy._core`` in numpy 2, ``numpy.core`` in numpy 1)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar() -> Callable:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


def _numpy_dtype_classes() -> List[type]:
    """The concrete dtype classes numpy >= 1.25 pickles (``numpy.dtypes.Float64DType``, ...)."""
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is None:
        return []
    return [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """Stand-in for ``builtins.getattr`` while unpickling: resolves only HistoryBuffer statistics.

    ``HistoryBuffer`` pickles its registered statistic methods as ``getattr(HistoryBuffer, 'mean')``;
    allowing the real ``getattr`` would hand a checkpoint any attribute of any allowed object.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer()  # the default statistics are registered by the first instance
    if owner is HistoryBuffer and name in HistoryBuffer._statistics_methods:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in a checkpoint (only HistoryBuffer statistics)')


def safe_globals() -> List[Any]:
    """Return the types allowed in checkpoints, beyond torch's own weights-only set.

    Exactly what mmengine Runner checkpoints carry: ``HistoryBuffer`` (message hub scalars) with
    its statistic methods (through a restricted ``getattr``), and numpy arrays, dtypes and scalars
    (iteration statistics, dataset meta).
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_statistic, 'builtins.getattr'), _numpy_reconstruct(),
            _numpy_scalar(), np.ndarray, np.dtype, *_numpy_dtype_classes()]


def _refusal_reason(message: str) -> str:
    """The informative part of torch's weights-only error (what follows 'WeightsUnpickler error:')."""
    _, _, tail = message.partition('WeightsUnpickler error:')
    for line in tail.splitlines():
        if line.strip():
            return line.split(' Please use ')[0].strip()
    return message.splitlines()[0] if message else ''


def load_local_checkpoint(filename: str, map_location: Optional[Any] = None,
                          logger: Any = None) -> Any:
    """Load a checkpoint from a local path with ``weights_only=True``.

    Args:
        filename: local path (``~`` expanded).
        map_location: as in :func:`torch.load`.
        logger: unused; part of mmengine's loader signature.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file pickles an object outside the allow-list.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _refusal_reason(str(exc)) or type(exc).__name__
        raise UnsafeCheckpointError(
            f'Refused to load checkpoint {filename}: it contains a pickled object that is not on '
            f"localattn's allow-list of checkpoint types ({detail.strip()}). Loading it would let the "
            'file run arbitrary code. If you trust the file, either allow that type explicitly with '
            '`torch.serialization.add_safe_globals([TheType])` before loading, or load it once with '
            '`torch.load(path, weights_only=False)` and re-save just its `state_dict`.') from exc


def install() -> None:
    """Allow-list the Runner checkpoint types and route mmengine's local loads through the safe loader.

    Idempotent. Does nothing on torch < 2.4 (no ``add_safe_globals``); those versions load with
    mmengine's own loader as before.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(safe_globals())
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
