"""Backbones: hierarchical ones with multi-scale NCHW outputs (strides 4, 8, 16, 32) and the
isotropic NAT / DiNAT (one resolution, stride 16)."""
from .dinats import DiNATs
from .isotropic import IsotropicDiNAT, IsotropicNAT
from .nat import NAT, DiNAT
from .qnavit import QnAViT

__all__ = ['NAT', 'DiNAT', 'DiNATs', 'IsotropicNAT', 'IsotropicDiNAT', 'QnAViT']
