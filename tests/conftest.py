"""Suite-wide fixtures.

Isolation: a test that runs mmengine's Runner in-process leaves its ``DefaultScope`` (e.g.
``'mmdet'``) as the current one, and later registry builds of another library (``mmpretrain``'s
``ImageClassifier``) would then look in the wrong registry. Every test starts from the scopes that
existed before it.

``load_tool``: the scripts under ``tools/`` are not a package; tests load them by path.
"""
import importlib.util
import os.path as osp

import pytest

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


@pytest.fixture(scope='session')
def load_tool():
    """``load_tool('analysis_tools/gpu_check.py')``: that script as a fresh module (not put in
    ``sys.modules``)."""
    def load(relpath: str):
        name = 'localattn_tool_' + osp.splitext(relpath)[0].replace('/', '_')
        spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, relpath))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


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
