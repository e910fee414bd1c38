"""Neighbourhood attention (NA / dilated NA) in the exact NATTEN semantics, with RPB and autograd.

Public ops: :func:`na1d`, :func:`na2d`, :func:`na3d` (heads-last tensors ``[B, *spatial, heads, head_dim]``).
Backends: ``reference`` (explicit gather, the oracle), ``unrolled`` (per-offset gathers: the export
path), ``tiled`` (CPU: a compiled exact kernel,
:mod:`.native`; elsewhere, with dropout or without a compiler: pure-torch tiles, :mod:`.tiled`),
``flex`` (torch FlexAttention, CUDA), ``natten`` (the optional NATTEN package); ``auto`` picks one.
"""
from .backends import native
from .functional import BACKENDS, na1d, na2d, na3d

__all__ = ['BACKENDS', 'na1d', 'na2d', 'na3d']
