"""What a user sees: errors and log lines that say what happened and what to do."""
import pytest
import torch

import localattn  # noqa: F401
from localattn.ops import na1d, na2d, na3d


@pytest.mark.parametrize('fn,shape,order', [
    (na2d, (2, 4, 56, 56, 32), '0, 2, 3, 1, 4'),
    (na1d, (2, 2, 64, 16), '0, 2, 1, 3'),
    (na3d, (1, 2, 16, 16, 16, 8), '0, 2, 3, 4, 1, 5'),
])
def test_na_heads_first_layout_is_named(fn, shape, order):
    q = torch.randn(*shape)
    with pytest.raises(ValueError, match=rf'looks heads-first .*permute\({order}\)'):
        fn(q, q, q, 7)


def test_na_small_map_message_unchanged_when_layout_is_plausible():
    q = torch.randn(2, 5, 5, 4, 8)  # a real 5x5 map with 4 heads: no layout hint
    with pytest.raises(ValueError) as info:
        na2d(q, q, q, 7)
    assert 'must be <= the size of axis 1 (5)' in str(info.value) and 'heads-first' not in str(info.value)
