"""A memo for index tables that stays correct while torch traces (compile, export, ONNX)."""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar('F', bound=Callable)


def table_cache(maxsize: int = 256) -> Callable[[F], F]:
    """``functools.lru_cache`` for functions that build index tensors from hashable (static) arguments.

    While torch traces (``torch.compile``, ``torch.export``, ONNX export) the function runs uncached:
    non-strict export runs Python under a fake-tensor mode, so a table first built there would be a
    fake tensor, and caching it would poison every later eager call. Dynamo ignores ``lru_cache``
    wrappers anyway. The returned function keeps ``cache_clear``/``cache_info``.
    """
    def decorate(fn: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            return cached(*args, **kwargs)

        wrapper.cache_clear = cached.cache_clear
        wrapper.cache_info = cached.cache_info
        return wrapper

    return decorate
