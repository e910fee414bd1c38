"""Checkpoints: safe reading, unwrapping, relative-position table resizing and loading with a report.

Every loader of this project goes through this module (torch only; mmengine is imported lazily, for
the Runner allow-list and for URLs):

* **Reading** (:func:`read_checkpoint`, :func:`load_local_checkpoint`). mmengine 0.10 calls
  ``torch.load`` without ``weights_only``; on torch >= 2.6 that means ``weights_only=True`` and every
  checkpoint the Runner saves fails to load, because it pickles mmengine ``HistoryBuffer`` objects and
  numpy arrays/scalars in its ``message_hub``. The usual work-around (``weights_only=False``) lets a
  checkpoint run arbitrary code. Instead, importing ``localattn`` calls :func:`install`, which
  allow-lists exactly the types that Runner checkpoints contain (:func:`safe_globals`) and replaces
  mmengine's local-file loader with :func:`load_local_checkpoint` (``weights_only=True``; a refused
  file raises :class:`UnsafeCheckpointError`, which says what was refused and how to load the file if
  trusted; a truncated, corrupt or non-checkpoint file raises :class:`CorruptCheckpointError`, which
  names the file and what to do). ``http(s)://`` checkpoints are downloaded into torch hub's cache
  (``<torch hub dir>/checkpoints``) and read by the same loader (:func:`load_remote_checkpoint`;
  torch hub's own ``load_state_dict_from_url``, which mmengine uses, unpickles with
  ``weights_only=False``). ``--resume``, ``load_from``, ``tools/test.py CONFIG CHECKPOINT`` and
  ``init_cfg=dict(type='Pretrained', checkpoint=...)`` all go through these loaders.
* **Writing** (:func:`atomic_backend`): mmengine writes a checkpoint in place, so a process killed
  while saving leaves a truncated ``iter_N.pth``. :func:`install` replaces mmengine's local file
  backend with one that writes to a temporary file in the same folder and renames it over the target
  (``os.replace``), so a checkpoint file is either complete or absent.
* **Unwrapping** (:func:`unwrap_state_dict`): ``{'state_dict' | 'model' | 'model_ema' | 'module': ...}``
  wrappers (nested too), a leading ``module.`` (DDP), and the ``backbone.`` part of a detector /
  segmentor / classifier checkpoint (or any explicit ``prefix``).
* **Resizing** relative-position tables when the window differs: :func:`resize_rpb` for NA tables
  ``[heads, 2k-1, 2k-1]`` (e.g. kernel 7 -> 11), :func:`resize_bias_table` for Swin-style tables
  ``[(2w-1)^2, heads]`` (QnA-ViT's window self-attention).
* **Loading** (:func:`load_weights`) into any module: unwrap, an optional family-specific ``adapt``
  step (renames, dropped keys, e.g. :func:`localattn.converters.nat.official_to_backbone`), resize
  tables, skip other shape mismatches, and return a :class:`LoadReport` (loaded / missing /
  unexpected / skipped with both shapes / resized / renamed / ignored).
"""
from __future__ import annotations

import argparse
import functools
import os
import os.path as osp
import pickle
import sys
import urllib.error
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['UnsafeCheckpointError', 'CorruptCheckpointError', 'RemoteCheckpointError', 'safe_globals',
           'load_local_checkpoint', 'load_remote_checkpoint', 'atomic_backend', 'atomic_write',
           'install', 'read_checkpoint', 'unwrap_state_dict', 'resize_rpb', 'resize_bias_table',
           'RELATIVE_TABLES', 'LoadReport', 'load_weights', 'PartialLoadError', 'MIN_LOADED_FRACTION',
           'compare_state_dicts']


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------
class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects outside the allow-list and was not loaded."""


class CorruptCheckpointError(RuntimeError):
    """A file is not a readable checkpoint: empty, truncated, corrupt, or not a checkpoint at all."""


class RemoteCheckpointError(OSError):
    """A ``http(s)://`` checkpoint could not be downloaded."""


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


def _bytes(*args: Any) -> bytes:
    """Stand-in for ``builtins.bytes`` while unpickling: what pickle protocol 2 writes for ``b''``.

    An empty byte string (the buffer of every empty numpy array, e.g. a ``HistoryBuffer`` with no
    values yet or ``np.zeros(0)``) pickles as ``bytes()``; non-empty ones use ``_codecs.encode``,
    which torch allows. Only ``bytes()`` and ``bytes(<bytes-like>)`` are accepted: ``bytes(n)``
    would let a file allocate ``n`` bytes.
    """
    if not args:
        return b''
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    raise pickle.UnpicklingError(
        f'bytes{tuple(type(a).__name__ for a in args)} is not allowed in a checkpoint (only bytes() '
        'and bytes(<bytes>))')


def safe_globals() -> List[Any]:
    """Return the types allowed in checkpoints, beyond torch's own weights-only set.

    Exactly what mmengine Runner checkpoints and released checkpoints carry: ``HistoryBuffer``
    (message hub scalars) with its statistic methods (through a restricted ``getattr``), numpy
    arrays, dtypes and scalars (iteration statistics, dataset meta), empty byte strings (the data
    of empty numpy arrays, through a restricted ``bytes``) and ``argparse.Namespace`` (the ``args``
    that timm-style training scripts save; plain attributes, no code).
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_statistic, 'builtins.getattr'),
            (_bytes, 'builtins.bytes'), argparse.Namespace, _numpy_reconstruct(),
            _numpy_scalar(), np.ndarray, np.dtype, *_numpy_dtype_classes()]


def _refusal_reason(message: str) -> str:
    """The informative part of torch's weights-only error (what follows 'WeightsUnpickler error:')."""
    _, _, tail = message.partition('WeightsUnpickler error:')
    for line in tail.splitlines():
        if line.strip():
            return line.split(' Please use ')[0].strip()
    # blocked modules (os, posix, subprocess, ...) get a message without that marker
    for line in message.splitlines():
        if 'GLOBAL' in line or 'Unsupported' in line:
            return line.strip()
    return message.splitlines()[0] if message else ''


#: How the two formats of ``torch.save`` begin: a zip archive (torch >= 1.6) or a pickle (legacy).
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'
#: Messages of torch's readers that mean the bytes are damaged (truncated zip, short legacy file).
_CORRUPT_MARKERS = ('PytorchStreamReader', 'central directory', 'unexpected EOF', 'corrupted',
                    'file might be corrupted', 'invalid header', 'truncated', 'zip archive')


def _corrupt(filename: str, reason: str, cause: Optional[BaseException] = None
             ) -> CorruptCheckpointError:
    try:
        size = f'{osp.getsize(filename):,} bytes'
    except OSError:
        size = 'size unknown'
    detail = f' ({type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else "no message"})' \
        if cause is not None else ''
    return CorruptCheckpointError(
        f'{filename} ({size}) is not a readable checkpoint: {reason}{detail}. It is probably '
        'truncated or damaged: an interrupted download or copy, a full disk, or a process killed '
        'while writing it. Re-download (or re-copy) the file and check the free disk space '
        f'(`df -h {osp.dirname(osp.abspath(filename))}`); for a checkpoint of your own run, '
        '`tools/train.py CONFIG --resume` continues from the last complete one.')


def _check_header(filename: str) -> None:
    """Raise :class:`CorruptCheckpointError` unless the file starts like a ``torch.save`` file."""
    with open(filename, 'rb') as f:
        head = f.read(64)
    if not head:
        raise _corrupt(filename, 'the file is empty')
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return
    reason = f'it begins with {head[:16]!r}, neither a zip archive (torch.save) nor a pickle'
    if head.lstrip()[:1] == b'<':
        reason += ' -- it looks like an HTML/XML page, e.g. an error page saved by a failed download'
    raise _corrupt(filename, reason)


def load_local_checkpoint(filename: str, map_location: Optional[Any] = None,
                          logger: Any = None) -> Any:
    """Load a checkpoint from a local path with ``weights_only=True``.

    Args:
        filename: local path (``~`` expanded).
        map_location: as in :func:`torch.load`.
        logger: unused; part of mmengine's loader signature.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: empty, truncated, damaged or not a ``torch.save`` file.
        UnsafeCheckpointError: the file pickles an object outside the allow-list.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found.')
    _check_header(filename)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _refusal_reason(str(exc)) or type(exc).__name__
        if any(marker in str(exc) for marker in ('truncated', 'EOF')):
            raise _corrupt(filename, 'the pickled data ends early', exc) from exc
        raise UnsafeCheckpointError(
            f'Refused to load checkpoint {filename}: it contains a pickled object that is not on '
            f"localattn's allow-list of checkpoint types ({detail.strip()}). Loading it would let the "
            'file run arbitrary code. If you trust the file, either allow that type explicitly with '
            '`torch.serialization.add_safe_globals([TheType])` before loading, or load it once with '
            '`torch.load(path, weights_only=False)` and re-save just its `state_dict`.') from exc
    except (EOFError, OSError) as exc:  # OSError: reading past the end of a truncated zip, I/O errors
        raise _corrupt(filename, 'reading it failed', exc) from exc
    except RuntimeError as exc:
        if any(marker in str(exc) for marker in _CORRUPT_MARKERS):
            raise _corrupt(filename, 'torch could not read it', exc) from exc
        raise


def _hub_cache_dir() -> str:
    """Where torch hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def _download(url: str, cached: str, progress: bool) -> None:
    """Download ``url`` to ``cached`` (torch hub's downloader: temporary file, then rename)."""
    os.makedirs(osp.dirname(cached), exist_ok=True)
    sys.stderr.write(f'Downloading: "{url}" to {cached}\n')
    try:
        torch.hub.download_url_to_file(url, cached, progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as exc:  # URLError/HTTPError/timeouts
        reason = getattr(exc, 'reason', None) or exc
        raise RemoteCheckpointError(
            f'could not download checkpoint {url} ({type(exc).__name__}: {reason}). Without network '
            'access, download it on another machine and point the config at the local file, e.g. '
            f"`init_cfg=dict(type='Pretrained', checkpoint='/path/to/{osp.basename(cached)}')` or "
            f"`load_from='/path/to/{osp.basename(cached)}'` (`--cfg-options load_from=...`), or copy it "
            f'to {cached}, where it is looked up first (torch hub\'s cache: $TORCH_HOME/hub/checkpoints).'
            ) from exc


def load_remote_checkpoint(filename: str, map_location: Optional[Any] = None,
                           model_dir: Optional[str] = None, progress: Optional[bool] = None,
                           logger: Any = None) -> Any:
    """Download a ``http(s)://`` checkpoint into torch hub's cache (once) and load it with
    :func:`load_local_checkpoint` (``weights_only=True`` and the allow-list).

    Args:
        filename: the URL; the cached file is ``model_dir/<last path component>``.
        map_location: as in :func:`torch.load`.
        model_dir: cache folder; default ``<torch.hub.get_dir()>/checkpoints``, like torch hub.
        progress: show a download progress bar; default: when stderr is a terminal.
        logger: unused; part of mmengine's loader signature.

    In a distributed run the local rank 0 process downloads while the others wait (as mmengine's
    own http loader does).

    Raises:
        RemoteCheckpointError: the download failed (no network, HTTP error); the message says how to
            use a local file instead.
        CorruptCheckpointError / UnsafeCheckpointError: as :func:`load_local_checkpoint`; a corrupt
            cached file must be deleted to download it again.
    """
    name = osp.basename(urlparse(filename).path)
    if not name:
        raise ValueError(f'checkpoint URL {filename!r} does not end in a file name')
    cached = osp.join(model_dir or _hub_cache_dir(), name)
    progress = sys.stderr.isatty() if progress is None else progress
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    first = not distributed or int(os.environ.get('LOCAL_RANK', dist.get_rank() if distributed else 0)) == 0
    error: Optional[BaseException] = None
    if first and not osp.isfile(cached):
        try:
            _download(filename, cached, progress)
        except RemoteCheckpointError as exc:
            error = exc
    if distributed:
        dist.barrier()
    if error is not None:
        raise error
    if not osp.isfile(cached):
        raise RemoteCheckpointError(f'checkpoint {filename} was not downloaded to {cached} by the '
                                    'first process of this node')
    try:
        return load_local_checkpoint(cached, map_location=map_location)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f'{exc} (downloaded from {filename}: delete {cached} to download '
                                     'it again)') from exc


def atomic_write(data: bytes, filepath: str) -> None:
    """Write ``data`` to ``filepath`` all or nothing: a temporary file in the same folder, flushed
    to disk, then renamed over ``filepath`` (through a symlink to its target)."""
    filepath = osp.realpath(filepath)
    os.makedirs(osp.dirname(filepath), exist_ok=True)
    tmp = f'{filepath}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


@functools.lru_cache(maxsize=None)
def atomic_backend() -> type:
    """``AtomicLocalBackend``: mmengine's local file backend whose ``put`` / ``put_text`` write
    all or nothing (:func:`atomic_write`); everything else is ``mmengine.fileio.LocalBackend``'s.
    (Built on first use: it needs mmengine.)"""
    from mmengine.fileio import LocalBackend

    class AtomicLocalBackend(LocalBackend):
        def put(self, obj: bytes, filepath) -> None:
            atomic_write(obj, str(filepath))

        def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
            atomic_write(obj.encode(encoding), str(filepath))

    return AtomicLocalBackend


def install() -> None:
    """Allow-list the Runner checkpoint types, route mmengine's local and ``http(s)://`` loads
    through the safe loaders and make its local file writes atomic (:func:`atomic_backend`).

    Idempotent. The loaders are not replaced on torch < 2.4 (no ``add_safe_globals``); those
    versions load with mmengine's own loader as before.
    """
    from mmengine.fileio import register_backend
    register_backend('local', atomic_backend(), force=True, prefixes='')
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(safe_globals())
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_remote_checkpoint,
                                     force=True)


def read_checkpoint(checkpoint: Union[str, Mapping[str, Any]], map_location: Any = 'cpu') -> Any:
    """A loaded checkpoint: a mapping is returned as is, a local path is read with
    :func:`load_local_checkpoint`, a ``http(s)://`` URL with :func:`load_remote_checkpoint`, any
    other URL (``scheme://...``) with mmengine's ``CheckpointLoader``."""
    if not isinstance(checkpoint, str):
        return checkpoint
    if '://' not in checkpoint:
        return load_local_checkpoint(checkpoint, map_location=map_location)
    if checkpoint.startswith(('http://', 'https://')):
        return load_remote_checkpoint(checkpoint, map_location=map_location)
    try:
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError as exc:
        raise ValueError(f'reading {checkpoint!r} needs mmengine (only local paths work without '
                         'it)') from exc
    return CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)


# ------------------------------------------------------------------------------------------------
# Unwrapping
# ------------------------------------------------------------------------------------------------
#: Keys under which training frameworks nest the weights, tried in this order.
WRAPPER_KEYS = ('state_dict', 'model', 'model_ema', 'module')


def _innermost(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The innermost ``state_dict``/``model``/... mapping, keys unchanged."""
    sd: Any = checkpoint
    while isinstance(sd, Mapping):
        inner = next((sd[k] for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, Tensor) for v in sd.values()):
            break
        sd = inner
    if not isinstance(sd, Mapping):
        raise ValueError(f'checkpoint is not a state dict (got {type(sd).__name__})')
    return sd


def _strip(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix):]
    return key


def _select(checkpoint: Mapping[str, Any], prefix: Optional[str]
            ) -> Tuple['OrderedDict[str, Tensor]', List[str]]:
    """``(tensors under the prefix, keys left out)``; see :func:`unwrap_state_dict`."""
    innermost = _innermost(checkpoint)
    tensors = OrderedDict((_strip(k, 'module.'), v) for k, v in innermost.items()
                          if isinstance(v, Tensor))
    if not tensors:
        raise ValueError(f'checkpoint holds no tensors (keys: {list(innermost)[:10]})')
    if prefix is None:
        if not any(k.startswith('backbone.') for k in tensors):
            return tensors, []
        prefix = 'backbone.'
    elif prefix == '':
        return tensors, []
    elif not prefix.endswith('.'):
        prefix += '.'
    selected = OrderedDict((_strip(k[len(prefix):], 'module.'), v) for k, v in tensors.items()
                           if k.startswith(prefix))
    if not selected:
        raise ValueError(f'no key of the checkpoint starts with prefix {prefix!r} (first keys: '
                         f'{list(tensors)[:5]})')
    return selected, [k for k in tensors if not k.startswith(prefix)]


def unwrap_state_dict(checkpoint: Mapping[str, Any], prefix: Optional[str] = None
                      ) -> 'OrderedDict[str, Tensor]':
    """The flat ``{name: tensor}`` of a checkpoint.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` (nested too), drops non-tensor entries and
    leading ``module.`` prefixes, then keeps the keys under ``prefix`` (with the prefix removed;
    ``'backbone'`` and ``'backbone.'`` are the same; ``''`` keeps every key). With ``prefix=None``
    a checkpoint holding ``backbone.*`` keys (a detector, segmentor or classifier) gives its
    backbone part, any other checkpoint all its keys.

    Raises:
        ValueError: not a state dict, no tensor, or no key under ``prefix``.
    """
    return _select(checkpoint, prefix)[0]


# ------------------------------------------------------------------------------------------------
# Relative-position tables
# ------------------------------------------------------------------------------------------------
#: Names (last component) of the relative-position tables :func:`load_weights` resizes.
RELATIVE_TABLES = ('rpb', 'relative_position_bias_table')


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _interpolate(grid: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """Resize ``[C, H, W]`` to ``[C, *size]`` (float32 arithmetic, dtype kept)."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    resized = F.interpolate(grid.float()[None], size=size, mode=mode, align_corners=False)[0]
    return resized.to(grid.dtype)


def resize_rpb(table: Tensor, kernel_size: Union[int, Sequence[int]], mode: str = 'bicubic'
               ) -> Tensor:
    """Resize an NA table ``[heads, 2k_H-1, 2k_W-1]`` to the kernel ``kernel_size`` (int or pair).

    ``mode``: ``'bicubic'`` (default) or ``'bilinear'``; the grid keeps its centre (offset 0).
    """
    if table.dim() != 3 or table.shape[-1] % 2 == 0 or table.shape[-2] % 2 == 0:
        raise ValueError(f'RPB table must be [heads, 2k-1, 2k-1], got {tuple(table.shape)}')
    return _interpolate(table, tuple(2 * k - 1 for k in _pair(kernel_size)), mode)


def resize_bias_table(table: Tensor, window_size: Union[int, Sequence[int]],
                      mode: str = 'bicubic') -> Tensor:
    """Resize a Swin-style table ``[(2w_H-1) * (2w_W-1), heads]`` (row-major offsets) from a square
    window to ``window_size`` (int or pair)."""
    side = round(table.shape[0]**0.5) if table.dim() == 2 else 0
    if side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(f'bias table must be [(2w-1)^2, heads], got {tuple(table.shape)}')
    size = tuple(2 * w - 1 for w in _pair(window_size))
    grid = _interpolate(table.T.reshape(-1, side, side), size, mode)
    return grid.reshape(table.shape[1], -1).T.contiguous()


def _resize_table(value: Tensor, shape: Tuple[int, ...], mode: str) -> Optional[Tensor]:
    """``value`` resized to ``shape`` if both are tables of one layout with the same heads, else None."""
    if value.dim() != len(shape):
        return None
    try:
        if value.dim() == 3 and value.shape[0] == shape[0]:
            return resize_rpb(value, ((shape[1] + 1) // 2, (shape[2] + 1) // 2), mode)
        if value.dim() == 2 and value.shape[1] == shape[1]:
            side = round(shape[0]**0.5)
            resized = resize_bias_table(value, (side + 1) // 2, mode)
            return resized if tuple(resized.shape) == tuple(shape) else None
    except ValueError:
        return None
    return None


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def _listing(keys: Sequence[str], limit: int = 20) -> str:
    if not keys:
        return 'none'
    more = f', ... (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _percent(fraction: float) -> str:
    """``fraction`` as a percentage that never reads 100.0% (or 0.0%) unless it is exactly that."""
    if 0.999 < fraction < 1.0:
        return '>99.9%'
    if 0.0 < fraction < 0.001:
        return '<0.1%'
    return f'{fraction:.1%}'


@dataclass
class LoadReport:
    """What :func:`load_weights` did. Key lists use the model's names.

    Attributes:
        source: the checkpoint path (or ``'<dict>'``).
        loaded: keys copied into the model.
        missing: model keys left at their init (``skipped`` ones included; ``new`` ones excluded).
        unexpected: checkpoint keys the model does not have.
        skipped: ``'key: checkpoint (..) vs model (..)'`` for shape mismatches that were not loaded.
        resized: ``'key: (..) -> (..)'`` for relative-position tables interpolated to the model.
        renamed: ``{checkpoint key: model key}`` of the ``adapt`` step.
        ignored: checkpoint keys dropped on purpose (a classification head, keys outside ``prefix``).
        new: model modules that this checkpoint layout cannot hold (e.g. the output norms of a
            classification checkpoint), kept at their init and not counted as missing.
        params_total: parameter values (elements) of the model, ``new`` modules excluded.
        params_loaded: how many of them came from the checkpoint.
    """
    source: str = '<dict>'
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    renamed: Dict[str, str] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    new: List[str] = field(default_factory=list)
    params_total: int = 0
    params_loaded: int = 0

    @property
    def clean(self) -> bool:
        """No missing, unexpected or skipped keys."""
        return not (self.missing or self.unexpected or self.skipped)

    @property
    def fraction(self) -> float:
        """Fraction of the model's parameter values loaded (1.0 for a model without parameters)."""
        return self.params_loaded / self.params_total if self.params_total else 1.0

    def format(self) -> str:
        """A multi-line summary for the log."""
        renamed = [f'{a} -> {b}' for a, b in self.renamed.items()]
        return '\n'.join([
            f'Loaded {len(self.loaded)} tensors from {self.source} ({_percent(self.fraction)} of the '
            f'model\'s parameter values: {self.params_loaded:,} of {self.params_total:,}):',
            f'  missing (kept at init): {_listing(self.missing)}',
            f'  unexpected: {_listing(self.unexpected)}',
            f'  skipped (shape mismatch): {_listing(self.skipped)}',
            f'  resized relative-position tables: {_listing(self.resized)}',
            f'  renamed: {_listing(renamed)}',
            f'  ignored (head / outside the prefix): {_listing(self.ignored)}',
            f'  new (not in this checkpoint layout, kept at init): {_listing(self.new)}'])


#: ``adapt(state_dict, model_state, report) -> state_dict``: maps a checkpoint layout onto a model's
#: names (recording renames, dropped keys and new modules in ``report``).
Adapter = Callable[['OrderedDict[str, Tensor]', Mapping[str, Tensor], LoadReport],
                   Mapping[str, Tensor]]


#: A pretrained load that fills less than this fraction of a model's parameter values is refused
#: (:class:`PartialLoadError`) unless a partial load is asked for explicitly.
MIN_LOADED_FRACTION = 0.5


class PartialLoadError(RuntimeError):
    """A checkpoint matched too little of a model (see :data:`MIN_LOADED_FRACTION`)."""


def _count_params(report: LoadReport, params: Mapping[str, int]) -> None:
    """Fill ``params_total`` / ``params_loaded`` from ``{name: numel}`` of the model's parameters."""
    new = tuple(name + '.' for name in report.new)
    loaded = set(report.loaded)
    counted = {k: n for k, n in params.items() if not k.startswith(new)}
    report.params_total = sum(counted.values())
    report.params_loaded = sum(n for k, n in counted.items() if k in loaded)


def compare_state_dicts(own: Mapping[str, Tensor], state: Mapping[str, Tensor],
                        params: Mapping[str, int], source: str = '<dict>') -> LoadReport:
    """What loading ``state`` into a model with state dict ``own`` would do, by name and shape
    (no renaming or resizing): a :class:`LoadReport` with loaded / missing / unexpected / skipped
    keys and the parameter counts (``params``: ``{name: numel}`` of the model's parameters)."""
    report = LoadReport(source=source)
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target.shape):
            report.skipped.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                                  f'{tuple(target.shape)}')
        else:
            report.loaded.append(key)
    loaded = set(report.loaded)
    report.missing = [k for k in own if k not in loaded]
    _count_params(report, params)
    return report


def load_weights(model: nn.Module, checkpoint: Union[str, Mapping[str, Any]],
                 prefix: Optional[str] = None, adapt: Optional[Adapter] = None,
                 tables: Sequence[str] = RELATIVE_TABLES, mode: str = 'bicubic',
                 strict: bool = False, map_location: Any = 'cpu', min_fraction: float = 0.0,
                 partial_hint: str = 'pass min_fraction=0 to allow it') -> LoadReport:
    """Load ``checkpoint`` into ``model`` and report what happened.

    Args:
        model: any module.
        checkpoint: a path / URL (:func:`read_checkpoint`) or an already loaded dict.
        prefix: keep only keys under it (see :func:`unwrap_state_dict`); by default the
            ``backbone.`` part of a full-model checkpoint, else everything.
        adapt: optional layout mapping applied before matching (see :data:`Adapter`).
        tables: last name components of the relative-position tables to resize when their window
            differs (:func:`resize_rpb` / :func:`resize_bias_table`); other mismatches are skipped.
        mode: interpolation of the tables, ``'bicubic'`` or ``'bilinear'``.
        strict: raise ``RuntimeError`` (with the report) unless the report is clean.
        map_location: for reading a path.
        min_fraction: raise :class:`PartialLoadError` (with the report) when less than this fraction
            of the model's parameter values (``new`` modules excluded) was loaded; the model keeps
            what was loaded.
        partial_hint: how to allow a deliberately partial load, for that error.

    Returns:
        the :class:`LoadReport` (``fraction``: the share of parameter values loaded).
    """
    report = LoadReport(source=checkpoint if isinstance(checkpoint, str) else '<dict>')
    state, report.ignored = _select(read_checkpoint(checkpoint, map_location), prefix)
    own = model.state_dict()
    if adapt is not None:
        state = adapt(state, own, report)
    loadable = OrderedDict()
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            report.unexpected.append(key)
            continue
        if value.shape != target.shape:
            resized = None
            if key.rsplit('.', 1)[-1] in tables:
                resized = _resize_table(value, tuple(target.shape), mode)
            if resized is None:
                report.skipped.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                                      f'{tuple(target.shape)}')
                continue
            report.resized.append(f'{key}: {tuple(value.shape)} -> {tuple(target.shape)}')
            value = resized
        loadable[key] = value
    model.load_state_dict(loadable, strict=False)
    report.loaded = list(loadable)
    new = tuple(name + '.' for name in report.new)
    report.missing = [k for k in own if k not in loadable and not k.startswith(new)]
    _count_params(report, {name: p.numel() for name, p in model.named_parameters()})
    if report.fraction < min_fraction:
        raise PartialLoadError(
            f'{report.source} matches only {_percent(report.fraction)} of the parameter values of '
            f'{type(model).__name__} (less than {min_fraction:.0%}): it is probably a checkpoint of '
            'another architecture or size, or its keys sit under another prefix. Check the arch '
            "(embed_dims, depths, heads) and the `prefix` ('backbone.' for a detector / segmentor / "
            f'classifier checkpoint). If a partial load is what you want, {partial_hint}.\n'
            + report.format())
    if strict and not report.clean:
        raise RuntimeError(f'checkpoint does not match {type(model).__name__} exactly:\n'
                           + report.format())
    return report
