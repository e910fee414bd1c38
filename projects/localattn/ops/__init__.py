"""Functional kernels: neighbourhood attention (``na1d``/``na2d``/``na3d``) and QnA (``qna2d``).

Tensors are heads-last, ``[B, *spatial, heads, head_dim]``.
"""
from .na import na1d, na2d, na3d
from .qna import qna2d

__all__ = ['na1d', 'na2d', 'na3d', 'qna2d']
