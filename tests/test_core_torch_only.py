"""The torch-only core: ``localattn.ops`` and ``localattn.layers`` in a fresh interpreter where no
OpenMMLab package can be imported, and the ``native`` kernel's fallback when its build fails.

Each test runs a script in a subprocess whose ``sys.meta_path`` starts with a finder that refuses
mmcv, mmengine, mmdet, mmseg and mmpretrain (as if they were not installed), with the working tree's
``projects/`` first on ``sys.path``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECTS = Path(__file__).resolve().parents[1] / 'projects'
HAS_CXX = shutil.which('g++') is not None or shutil.which('c++') is not None

BLOCK_OPENMMLAB = '''
import importlib.abc
import sys

BLOCKED = ('mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain')


class RefuseOpenMMLab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {name!r} (refused by the test)', name=name)
        return None


sys.meta_path.insert(0, RefuseOpenMMLab())
'''


def run_isolated(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` after :data:`BLOCK_OPENMMLAB` in a fresh interpreter; fail with its output."""
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECTS), os.environ.get('PYTHONPATH', '')]),
                   **env)
    proc = subprocess.run([sys.executable, '-c', BLOCK_OPENMMLAB + textwrap.dedent(script)], env=environ,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    return proc


def test_ops_and_layers_run_without_openmmlab():
    proc = run_isolated('''
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import localattn.ops
            import localattn.layers
            import localattn
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
        assert not loaded, loaded
        assert not caught, [str(w.message) for w in caught]
        assert localattn.REGISTERED == {} and 'backbones' not in localattn.__all__
        assert 'localattn.backbones' not in sys.modules and not hasattr(localattn, 'backbones')

        import torch
        from localattn.layers import NeighborhoodAttention2d, QnA2d
        from localattn.ops import na2d
        from localattn.ops.na import resolve_backend
        from localattn.ops.qna import _dense_window_softmax
        torch.manual_seed(0)

        # na2d with RPB, backend 'auto', against the reference backend: values and gradients
        leaves = [torch.randn(2, 11, 9, 2, 8, requires_grad=True) for _ in range(3)]
        rpb = (0.5 * torch.randn(2, 5, 5)).requires_grad_()
        grad_out = torch.randn(2, 11, 9, 2, 8)
        results = {}
        for backend in ('auto', 'reference'):
            out = na2d(*leaves, 3, dilation=(2, 1), rpb=rpb, backend=backend)
            results[backend] = (out, torch.autograd.grad(out, leaves + [rpb], grad_out))
        (out, grads), (want, want_grads) = results['auto'], results['reference']
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        for got, expected in zip(grads, want_grads):
            assert torch.isfinite(got).all() and got.abs().sum() > 0
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        print('auto =', resolve_backend('auto', leaves[0], rpb, (), 0.0))

        # QnA2d forward and backward, against an explicit per-window softmax of the same parameters
        layer = QnA2d(16, 32, num_heads=4, kernel_size=3, rpb_init_std=0.1)
        x = torch.randn(2, 10, 7, 16, requires_grad=True)
        y = layer(x)
        logits = torch.nn.functional.linear(x, *layer.logit_projection()).view(2, 10, 7, 2, 4)
        value = layer.value(x).view(2, 10, 7, 4, 8)
        dense = _dense_window_softmax(logits, value, layer.rpb, layer.attn_scale, 3, 1).sum(3)
        torch.testing.assert_close(y, layer.proj(dense.flatten(3)), rtol=1e-4, atol=1e-5)
        y.square().sum().backward()
        for name, tensor in [('x', x)] + list(layer.named_parameters()):
            assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
            assert tensor.grad.abs().sum() > 0, name

        # the NA layer too (training: attention dropout goes through the tiles backend)
        na = NeighborhoodAttention2d(32, num_heads=4, kernel_size=5, attn_drop=0.1)
        na(torch.randn(1, 12, 12, 32)).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in na.parameters())
        print('ok')
    ''')
    assert proc.stdout.splitlines()[-1] == 'ok'


FAILING_COMPILER = '''#!/bin/sh
echo "fake-compiler: fatal error: this compiler always fails" >&2
exit 1
'''


def test_failed_native_build_warns_once_and_auto_runs_tiles(tmp_path):
    """A compiler that fails: one loud RuntimeWarning with its stderr and the measured slowdown; auto
    runs the tiles backend (same numbers); backend='native' raises naming the alternatives."""
    compiler = tmp_path / 'fake-cxx'
    compiler.write_text(FAILING_COMPILER)
    compiler.chmod(0o755)
    run_isolated('''
        import os
        import warnings
        from pathlib import Path
        import torch
        from localattn.ops import na2d

        q, k, v = (torch.randn(1, 9, 8, 2, 4) for _ in range(3))
        rpb = torch.randn(2, 5, 5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            outs = [na2d(q, k, v, 3, rpb=rpb) for _ in range(3)]
            tiles = na2d(q, k, v, 3, rpb=rpb, backend='tiles')
            try:
                na2d(q, k, v, 3, rpb=rpb, backend='native')
            except RuntimeError as exc:
                error = str(exc)
            else:
                raise AssertionError('backend="native" ran without a kernel')
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1, messages
        assert 'fake-compiler: fatal error: this compiler always fails' in messages[0], messages[0]
        assert 'x slower' in messages[0] and '"tiles"' in messages[0], messages[0]
        assert all(torch.equal(out, tiles) for out in outs)
        assert error.startswith("backend='native' cannot run this call"), error
        assert 'fake-compiler' in error and "Backends that can: 'reference', 'unrolled', 'tiles'" in error, error
        assert not any(Path(os.environ['LOCALATTN_CACHE_DIR']).glob('na_cpu_*.so'))
    ''', CXX=str(compiler), LOCALATTN_CACHE_DIR=str(tmp_path / 'cache'))


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
def test_native_kernel_builds_from_its_source_file(tmp_path):
    """A fresh cache: the kernel compiles from native.cpp and runs silently."""
    run_isolated('''
        import warnings
        warnings.simplefilter('error')
        import torch
        from localattn.ops import na2d
        from localattn.ops.na import native
        assert native.SOURCE_FILE.name == 'native.cpp' and native.SOURCE_FILE.is_file()
        q = torch.randn(1, 9, 8, 2, 4)
        torch.testing.assert_close(na2d(q, q, q, 3, backend='native'), na2d(q, q, q, 3, backend='reference'))
    ''', LOCALATTN_CACHE_DIR=str(tmp_path))
    assert len(list(tmp_path.glob('na_cpu_*.so'))) == 1
