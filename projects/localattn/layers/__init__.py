"""nn.Modules built on :mod:`localattn.ops` (torch only); inputs are channels-last ``[B, H, W, C]``
(``WindowSelfAttention``: windows ``[B, nW, N, C]``)."""
from .neighborhood_attention import NeighborhoodAttention2d
from .qna import QnA2d
from .window_attention import WindowSelfAttention

__all__ = ['NeighborhoodAttention2d', 'QnA2d', 'WindowSelfAttention']
