"""Neighbourhood attention (NA / dilated NA) in the exact NATTEN semantics, with RPB and autograd.

Public ops: :func:`na1d`, :func:`na2d`, :func:`na3d` (heads-last tensors ``[B, *spatial, heads, head_dim]``).
Backends, one implementation each (:mod:`.backends`): ``reference`` (explicit gather, the oracle),
``unrolled`` (per-offset gathers: the export path), ``native`` (the compiled C++ CPU kernel),
``tiles`` (pure-torch tiles, any device), ``flex`` (torch FlexAttention, CUDA), ``natten`` (the
optional NATTEN package), ``triton`` (CUDA, opt-in). ``auto`` picks one by the table in
:mod:`.functional` (:func:`~.functional.resolve_backend`).
"""
from .backends import native
from .functional import BACKENDS, na1d, na2d, na3d, resolve_backend

__all__ = ['BACKENDS', 'na1d', 'na2d', 'na3d', 'native', 'resolve_backend']
