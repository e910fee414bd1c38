"""Per-axis neighbourhood windows: the whole NA neighbour rule, computed one axis at a time.

NA is separable: in 2-D/3-D a query's neighbour set is the Cartesian product of its per-axis
windows. Along one axis of length ``L`` (kernel ``k``, dilation ``d``, stride ``s``) the query at
global index ``i`` sees the keys ``first[i] + d * t`` for ``t < count[i]`` where

* dilation group ``g = i % d``, local index ``li = i // d``, group length
  ``Lg = L // d + (1 if g < L % d else 0)``;
* non-causal: leader ``l = min((li // s) * s + s // 2, Lg - 1)``, ``wl = k // 2``,
  ``wr = k // 2 + k % 2 - 1``, local start ``max(l - wl, 0) + (l + wr >= Lg) * (Lg - wr - l - 1)``,
  ``count = k`` (windows are shifted at borders, never padded);
* causal: leader ``l = min((li // s) * s + s - 1, Lg - 1)``, local start ``max(l - wl - wr, 0)``,
  local end ``min(li + 1, Lg)``;
* optional key-validity length ``V`` (``valid``): keys at global index ``>= V`` are dropped. They are
  always a suffix of the window, so this only lowers ``count`` (possibly to 0).

The relative-position-bias index of window key ``t`` is ``start - li + t + k - 1`` (the offset in
dilated steps shifted into ``[0, 2k - 2]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..caching import table_cache


@dataclass(frozen=True)
class AxisSpec:
    """Static description of one spatial axis of an NA call.

    ``valid`` (``None`` = ``length``) is the number of leading positions that may be attended as keys;
    window positions are always computed on the full ``length``.
    """

    length: int
    kernel: int
    dilation: int = 1
    stride: int = 1
    causal: bool = False
    valid: int | None = None

    @property
    def valid_length(self) -> int:
        return self.length if self.valid is None else self.valid


def pack_axes(axes: tuple[AxisSpec, ...]) -> list[int]:
    """``axes`` as a flat int list, 6 ints per axis (how the custom ops take them)."""
    return [v for ax in axes for v in (ax.length, ax.kernel, ax.dilation, ax.stride, int(ax.causal), ax.valid or 0)]


def unpack_axes(geom: list[int]) -> tuple[AxisSpec, ...]:
    """Inverse of :func:`pack_axes`."""
    return tuple(AxisSpec(L, k, d, s, bool(c), v or None) for L, k, d, s, c, v in
                 (geom[i:i + 6] for i in range(0, len(geom), 6)))


class AxisWindows(NamedTuple):
    """Window of every query along one axis; all int64 tensors of shape ``[L]``."""

    first: Tensor  # global index of the first window key
    count: Tensor  # number of window keys (<= kernel; after dropping invalid keys)
    rel: Tensor  # RPB index of the first window key, in [0, 2k - 2]


@table_cache(maxsize=256)
def axis_windows(spec: AxisSpec) -> AxisWindows:
    """Return the per-query window (first key, key count, first RPB index) along one axis."""
    length, k, d, s = spec.length, spec.kernel, spec.dilation, spec.stride
    i = torch.arange(length)
    g, li = i % d, i // d
    lg = length // d + (g < length % d).long()
    wl, wr = k // 2, k // 2 + k % 2 - 1
    if spec.causal:
        leader = torch.minimum((li // s) * s + s - 1, lg - 1)
        start = (leader - wl - wr).clamp(min=0)
        count = torch.minimum(li + 1, lg) - start
    else:
        leader = torch.minimum((li // s) * s + s // 2, lg - 1)
        start = (leader - wl).clamp(min=0) + (leader + wr >= lg).long() * (lg - wr - leader - 1)
        count = torch.full_like(i, k)
    first = g + d * start
    # keys first + d*t with t <= (V - 1 - first) // d are valid
    n_valid = torch.div(spec.valid_length - 1 - first, d, rounding_mode='floor') + 1
    count = torch.minimum(count, n_valid.clamp(min=0))
    return AxisWindows(first, count, start - li + k - 1)


class AxisTiles(NamedTuple):
    """Tiling of one axis for the ``tiles`` backend.

    Queries of one dilation group are cut into tiles of ``tile`` consecutive local indices; every tile
    reads one contiguous run of ``halo`` keys of its group, which covers all its queries' windows.
    ``n = dilation * ceil(ceil(L / dilation) / tile)`` tiles in total (group-major).
    """

    query: Tensor  # [n, tile] int64 global query index, -1 for padding slots
    key: Tensor  # [n, halo] int64 global key index, -1 for padding slots
    mask: Tensor  # [n, tile, halo] bool: key in the query's window (padding never is)
    rel: Tensor  # [n, tile, halo] int64 RPB index along this axis (0 where masked)


@table_cache(maxsize=256)
def axis_tiles(spec: AxisSpec, tile: int) -> AxisTiles:
    """Return the query/halo index tables, window mask and RPB index of ``spec`` cut in tiles.

    ``tile`` must be a multiple of the stride so that stride blocks never straddle tiles; then the
    windows of a tile's queries span at most ``tile + kernel - 1`` keys.
    """
    if tile % spec.stride:
        raise ValueError(f'tile ({tile}) must be a multiple of the stride ({spec.stride})')
    length, d = spec.length, spec.dilation
    win = axis_windows(spec)
    lp = -(-length // d)  # padded group length
    n_tiles = -(-lp // tile)
    halo = min(tile + spec.kernel - 1, lp)
    g = torch.arange(d).view(d, 1, 1)
    li = torch.arange(n_tiles).view(1, -1, 1) * tile + torch.arange(tile)  # [d, nT, T]
    q_glob = g + d * li
    q_real = q_glob < length
    q_safe = torch.where(q_real, q_glob, 0)
    start = torch.div(win.first[q_safe] - g, d, rounding_mode='floor')  # local window start
    count = torch.where(q_real, win.count[q_safe], 0)
    halo_start = torch.where(q_real[..., 0], start[..., 0], 0).clamp(max=lp - halo)  # [d, nT]
    hj = halo_start.unsqueeze(-1) + torch.arange(halo)  # [d, nT, H] local key index
    k_glob = g + d * hj
    k_real = k_glob < length
    offset = hj.unsqueeze(-2) - start.unsqueeze(-1)  # [d, nT, T, H] position inside the window
    mask = (offset >= 0) & (offset < count.unsqueeze(-1)) & k_real.unsqueeze(-2)
    rel = torch.where(mask, hj.unsqueeze(-2) - li.unsqueeze(-1) + spec.kernel - 1, 0)
    flat = d * n_tiles
    return AxisTiles(
        torch.where(q_real, q_glob, -1).view(flat, tile),
        torch.where(k_real, k_glob, -1).view(flat, halo),
        mask.view(flat, tile, halo),
        rel.view(flat, tile, halo),
    )


@table_cache(maxsize=256)
def axis_inverse(spec: AxisSpec) -> tuple[Tensor, Tensor]:
    """Queries holding each key in their window, along one axis: ``(first query, query count)``, ``[L]``.

    Windows start and end monotonically within a dilation group, so these queries are always
    ``first + d * t`` for ``t < count``.
    """
    win = axis_windows(spec)
    i = torch.arange(spec.length)
    offset = i[None, :] - win.first[:, None]  # [query, key]
    holds = (offset >= 0) & (offset % spec.dilation == 0) & (offset < spec.dilation * win.count[:, None])
    count = holds.sum(0)
    first = torch.where(holds, i[:, None], spec.length).amin(0)
    last = torch.where(holds, i[:, None], -1).amax(0)
    if bool(((count > 0) & (last - first != spec.dilation * (count - 1))).any()):
        raise AssertionError(f'non-contiguous inverse window for {spec}')
    return torch.where(count > 0, first, 0), count
