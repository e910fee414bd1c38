"""Checkpoints that must load, must be refused, or must fail with a useful message.

* Real mmengine Runner checkpoints (mmpretrain, mmseg, mmdet demo configs; saved before and after
  validation, a best-score checkpoint, and with empty numpy arrays / empty ``HistoryBuffer``s) load
  weights-only, and ``--resume`` from them works; code-executing pickles are still refused.
* Truncated, empty, damaged and non-checkpoint files: an error naming the file and what to do.
* ``http(s)://`` checkpoints: downloaded into torch hub's cache (mocked: no network in tests), read
  through the same allow-list; without network, an error naming the URL and the local-file fix.
* Checkpoint writes are atomic (temporary file + rename).
"""
import glob
import os
import os.path as osp
import pickle
import urllib.error

import numpy as np
import pytest
import torch

import localattn  # noqa: F401  installs the allow-list, the loaders and the atomic file backend
from localattn import checkpoint as ckpt

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', '_demo_')
CLS_CONFIG = osp.join(DEMO, 'nat-demo_synthetic-cls.py')
SEG_CONFIG = osp.join(DEMO, 'upernet_nat-demo_synthetic-128x128.py')
DET_CONFIG = osp.join(DEMO, 'mask-rcnn_nat-demo_fpn_synthetic.py')


def _generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'localattn_generate_synthetic_ckpt',
        osp.join(ROOT, 'tools', 'dataset_converters', 'generate_synthetic.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    _generator().generate(root, num_train=8, num_val=4, size=64, seed=0, tasks=('det', 'seg', 'cls'))
    return root


def _data_options(scope, root):
    import importlib.util
    spec = importlib.util.spec_from_file_location('localattn_demo_ckpt', osp.join(ROOT, 'tools', 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.data_root_options(scope, root)


def _cfg(config, scope, root, work_dir, **overrides):
    import argparse

    from mmengine.config import Config, DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = _data_options(scope, root) + [f'{k}={v}' for k, v in overrides.items()]
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *options]).cfg_options)
    cfg.work_dir = str(work_dir)
    return cfg


class _ExtraContent:
    """A hook adding what a Runner checkpoint may legitimately hold: an empty numpy array in the meta,
    a ``HistoryBuffer`` with no values yet, an empty int array in the runtime info."""
    priority = 'NORMAL'

    def __getattr__(self, name):  # every other hook stage: nothing
        if name.startswith(('before_', 'after_')):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def before_save_checkpoint(self, runner, checkpoint):
        from mmengine.logging import HistoryBuffer
        checkpoint['meta']['empty_array'] = np.zeros(0)
        checkpoint['message_hub']['log_scalars']['train/not_logged_yet'] = HistoryBuffer()
        checkpoint['message_hub']['runtime_info']['empty_ids'] = np.zeros((0, 2), np.int64)


def _train(cfg):
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class Extra(_ExtraContent, Hook):
        pass

    runner = Runner.from_cfg(cfg)
    runner.register_hook(Extra(), priority='NORMAL')
    runner.train()
    return runner


RUNS = {
    'mmpretrain': (CLS_CONFIG, {'train_dataloader.batch_size': 2, 'val_dataloader.batch_size': 2,
                                'default_hooks.checkpoint.save_best': 'auto'}),
    'mmseg': (SEG_CONFIG, {'train_dataloader.batch_size': 1, 'val_dataloader.batch_size': 1}),
    'mmdet': (DET_CONFIG, {'train_dataloader.batch_size': 1, 'val_dataloader.batch_size': 1}),
}


@pytest.mark.slow
@pytest.mark.parametrize('scope', list(RUNS))
def test_runner_checkpoints_load_weights_only_and_resume(scope, data_root, tmp_path):
    """Checkpoints at iterations 1 (before any validation), 2 (saved just before validating) and 3
    (after validation: metrics in the message hub), plus a best checkpoint for mmpretrain."""
    from mmengine.logging import HistoryBuffer
    config, extra = RUNS[scope]
    work = tmp_path / 'work'
    cfg = _cfg(config, scope, data_root, work, **extra, **{
        'train_cfg.max_iters': 3, 'train_cfg.val_interval': 2, 'default_hooks.checkpoint.interval': 1,
        'default_hooks.checkpoint.max_keep_ckpts': -1, 'default_hooks.logger.interval': 1})
    if scope != 'mmpretrain':  # the warm-up and poly schedules of the dense configs end later
        cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=3)]
    _train(cfg)
    paths = sorted(glob.glob(str(work / '*.pth')))
    expected = {'iter_1.pth', 'iter_2.pth', 'iter_3.pth'}
    assert expected <= {osp.basename(p) for p in paths}, paths
    if scope == 'mmpretrain':
        assert any(osp.basename(p).startswith('best_') for p in paths), paths
    for path in paths:
        loaded = ckpt.load_local_checkpoint(path)  # weights_only=True
        assert loaded['meta']['empty_array'].shape == (0, )
        scalars = loaded['message_hub']['log_scalars']
        assert isinstance(scalars['train/not_logged_yet'], HistoryBuffer)
        assert len(scalars['train/not_logged_yet'].data[0]) == 0
        assert loaded['message_hub']['runtime_info']['empty_ids'].shape == (0, 2)
        assert loaded['state_dict']
        if osp.basename(path).startswith('iter_'):  # best_* checkpoints hold the weights only
            assert loaded['optimizer'] and 'param_schedulers' in loaded
    after_val = ckpt.load_local_checkpoint(str(work / 'iter_3.pth'))
    assert any(k.startswith('val/') for k in after_val['message_hub']['log_scalars']), \
        list(after_val['message_hub']['log_scalars'])

    # mmengine's resume goes through the same loader
    resumed = _cfg(config, scope, data_root, tmp_path / 'resumed', **extra, **{
        'train_cfg.max_iters': 3, 'train_cfg.val_interval': 100, 'default_hooks.checkpoint.interval': 1})
    if scope != 'mmpretrain':
        resumed.param_scheduler = cfg.param_scheduler
    resumed.resume, resumed.load_from = True, str(work / 'iter_2.pth')
    runner = _train(resumed)
    assert runner.iter == 3


class Payload:
    """Runs a command when unpickled (what the allow-list exists to stop)."""

    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null', ))


def test_code_executing_pickles_still_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': Payload()}}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match='system'):
        ckpt.load_local_checkpoint(str(path))

    class BigBytes:  # bytes(n) would allocate n bytes: only bytes() and bytes(<bytes>) are allowed
        def __reduce__(self):
            return (bytes, (10**12, ))

    torch.save({'x': BigBytes()}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match='only bytes'):
        ckpt.load_local_checkpoint(str(path))


def test_plain_values_of_released_checkpoints_load(tmp_path):
    """Empty arrays/bytes, numpy scalars, dtypes, and the argparse ``args`` of timm-style scripts."""
    import argparse

    from mmengine.logging import HistoryBuffer
    state = {'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=0.1, model='nat_mini'),
             'meta': {'empty': np.zeros(0, np.float32), 'empty_bytes': b'', 'bytes': b'ab',
                      'hist': HistoryBuffer(), 'scalar': np.float64(1.5), 'dtype': np.dtype('int8'),
                      'strings': np.array(['a', 'bc'])}}
    path = tmp_path / 'released.pth'
    torch.save(state, path)
    loaded = ckpt.load_local_checkpoint(str(path))
    assert loaded['args'].model == 'nat_mini' and loaded['meta']['empty_bytes'] == b''
    assert loaded['meta']['empty'].dtype == np.float32 and loaded['meta']['empty'].size == 0


# ------------------------------------------------------------------------------ corrupt files
def _good(tmp_path):
    path = tmp_path / 'good.pth'
    torch.save({'state_dict': {f'w{i}': torch.randn(32, 32) for i in range(4)}, 'meta': {'iter': 2}},
               path)
    return path


@pytest.mark.parametrize('damage', ['empty', 'half', 'last_bytes', 'first_100', 'html', 'random',
                                    'legacy_half', 'legacy_first_50'])
def test_corrupt_file_names_the_file_and_the_fix(damage, tmp_path):
    good = _good(tmp_path)
    data = good.read_bytes()
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.randn(32, 32)}, legacy, _use_new_zipfile_serialization=False)
    old = legacy.read_bytes()
    content = {'empty': b'', 'half': data[:len(data) // 2], 'last_bytes': data[:-10],
               'first_100': data[:100], 'html': b'<!DOCTYPE html><html>404 Not Found</html>',
               'random': np.random.default_rng(0).bytes(4096), 'legacy_half': old[:len(old) // 2],
               'legacy_first_50': old[:50]}[damage]
    path = tmp_path / f'{damage}.pth'
    path.write_bytes(content)
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        ckpt.load_local_checkpoint(str(path))
    message = str(info.value)
    assert str(path) in message and 'is not a readable checkpoint' in message
    assert 'Re-download' in message and 'disk' in message
    if damage == 'html':
        assert 'HTML' in message


def test_corrupt_file_through_mmengine_and_pretrained(tmp_path):
    """`load_from` / `tools/test.py` (mmengine's loader) and `init_cfg` Pretrained say the same."""
    from mmengine.runner import load_checkpoint

    from localattn.backbones import NAT
    path = tmp_path / 'cut.pth'
    path.write_bytes(_good(tmp_path).read_bytes()[:-100])
    with pytest.raises(ckpt.CorruptCheckpointError, match='cut.pth .* is not a readable checkpoint'):
        load_checkpoint(torch.nn.Linear(2, 2), str(path))
    model = NAT(arch=dict(embed_dims=8, depths=(1, 1), num_heads=(1, 1), kernel_size=3),
                out_indices=(1, ), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ckpt.CorruptCheckpointError, match='Re-download'):
        model.init_weights()


def test_unrelated_runtime_errors_are_not_called_corrupt(tmp_path, monkeypatch):
    path = _good(tmp_path)

    def fail(*args, **kwargs):
        raise RuntimeError('Attempting to deserialize object on a CUDA device')

    monkeypatch.setattr(torch, 'load', fail)
    with pytest.raises(RuntimeError, match='CUDA device') as info:
        ckpt.load_local_checkpoint(str(path))
    assert not isinstance(info.value, ckpt.CorruptCheckpointError)


# ------------------------------------------------------------------------------ remote checkpoints
URL = 'https://download.example.org/localattn/nat_tiny_test.pth'


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    assert torch.hub.get_dir() == str(tmp_path / 'torch_home' / 'hub')
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


def _fake_download(payload, calls):
    def download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        torch.save(payload, dst)
    return download


def _tiny_nat(**kwargs):
    from localattn.backbones import NAT
    return NAT(arch=dict(embed_dims=8, depths=(1, 1), num_heads=(1, 1), kernel_size=3),
               out_indices=(0, 1), **kwargs)


def test_remote_pretrained_downloads_once_into_hub_cache(hub_dir, monkeypatch):
    source = _tiny_nat()
    calls = []
    monkeypatch.setattr(torch.hub, 'download_url_to_file',
                        _fake_download({'state_dict': source.state_dict()}, calls))
    for _ in range(2):
        model = _tiny_nat(init_cfg=dict(type='Pretrained', checkpoint=URL))
        model.init_weights()
        for (name, a), b in zip(source.state_dict().items(), model.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    assert calls == [URL]  # the second load used the cache
    assert (hub_dir / 'nat_tiny_test.pth').is_file()
    # mmengine's entry point (load_from) takes the same route
    from mmengine.runner.checkpoint import CheckpointLoader
    assert set(CheckpointLoader.load_checkpoint(URL, map_location='cpu')) == {'state_dict'}
    assert calls == [URL]


def test_remote_checkpoint_goes_through_the_allow_list(hub_dir, monkeypatch, capsys):
    class Printer:
        def __reduce__(self):
            return (print, ('remote payload executed', ))

    monkeypatch.setattr(torch.hub, 'download_url_to_file',
                        _fake_download({'state_dict': {'w': torch.zeros(1)}, 'x': Printer()}, []))
    from mmengine.runner.checkpoint import CheckpointLoader
    with pytest.raises(pickle.UnpicklingError, match='Refused to load checkpoint'):
        CheckpointLoader.load_checkpoint(URL, map_location='cpu')
    assert 'remote payload executed' not in capsys.readouterr().out


def test_remote_checkpoint_without_network(hub_dir, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError(OSError(-3, 'Temporary failure in name resolution'))

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    model = _tiny_nat(init_cfg=dict(type='Pretrained', checkpoint=URL))
    with pytest.raises(ckpt.RemoteCheckpointError) as info:
        model.init_weights()
    message = str(info.value)
    assert URL in message and 'name resolution' in message
    assert "checkpoint='/path/to/nat_tiny_test.pth'" in message and 'load_from' in message
    assert str(hub_dir / 'nat_tiny_test.pth') in message
    assert not (hub_dir / 'nat_tiny_test.pth').exists()


# ------------------------------------------------------------------------------ atomic writes
def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from mmengine.fileio import get_file_backend
    from mmengine.runner.checkpoint import save_checkpoint
    target = tmp_path / 'iter_4.pth'
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(target))
    assert torch.equal(ckpt.load_local_checkpoint(str(target))['state_dict']['w'], torch.ones(3))
    assert isinstance(get_file_backend(str(target)), ckpt.atomic_backend())

    def killed(fd):  # the process dies after writing, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'fsync', killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, str(target))
    monkeypatch.undo()
    # the previous file is intact and no temporary file is left behind
    assert torch.equal(ckpt.load_local_checkpoint(str(target))['state_dict']['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['iter_4.pth']
