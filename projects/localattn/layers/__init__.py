"""nn.Modules built on :mod:`localattn.ops`; inputs are channels-last ``[B, H, W, C]``."""
from .neighborhood_attention import NeighborhoodAttention2d
from .qna import QnA2d

__all__ = ['NeighborhoodAttention2d', 'QnA2d']
