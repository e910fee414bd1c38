"""Suite-wide isolation: a test that runs mmengine's Runner in-process leaves its ``DefaultScope``
(e.g. ``'mmdet'``) as the current one, and later registry builds of another library
(``mmpretrain``'s ``ImageClassifier``) would then look in the wrong registry. Every test starts
from the scopes that existed before it.
"""
import pytest


@pytest.fixture(autouse=True)
def _restore_default_scope():
    try:
        from mmengine.registry import DefaultScope
    except ImportError:  # the torch-only core: nothing to restore
        yield
        return
    # the instances live in ManagerMixin's class-level dict (what overwrite_default_scope restores too)
    saved = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
