"""Hierarchical backbones with multi-scale NCHW outputs (strides 4, 8, 16, 32)."""
from .nat import DiNAT, NAT
from .qnavit import QnAViT

__all__ = ['NAT', 'DiNAT', 'QnAViT']
