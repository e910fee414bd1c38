"""Registration in the three MODELS registries and safe checkpoint loading."""
import pickle
import warnings

import pytest
import torch

import localattn
from localattn import checkpoint as ckpt
from localattn import registry

EXPECTED = {'NeighborhoodAttention2d', 'QnA2d', 'NAT', 'DiNAT', 'QnAViT'}


@pytest.mark.parametrize('module', ['mmdet.registry', 'mmseg.registry', 'mmpretrain.registry'])
def test_registered_in_every_registry(module):
    import importlib
    models = importlib.import_module(module).MODELS
    missing = {name for name in EXPECTED if models.get(name) is None}
    assert not missing, f'{module}.MODELS lacks {missing}'
    assert set(localattn.REGISTERED[module.split('.')[0]]) >= EXPECTED


def test_build_backbone_through_each_registry():
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    from mmseg.registry import MODELS as SEG
    for models in (DET, SEG, CLS):
        layer = models.build(dict(type='NeighborhoodAttention2d', embed_dim=8, num_heads=2, kernel_size=3))
        assert isinstance(layer, localattn.layers.NeighborhoodAttention2d)


class _Probe(torch.nn.Module):
    pass


def test_missing_library_is_skipped_with_warning(monkeypatch):
    real_find_spec = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, 'find_spec',
                        lambda name: None if name == 'mmseg' else real_find_spec(name))
    with pytest.warns(registry.LocalattnImportWarning, match='mmseg is not installed'):
        done = registry.register_modules([_Probe])
    assert set(done) == {'mmdet', 'mmpretrain'}


def test_broken_library_is_reported(monkeypatch):
    real_import = registry.importlib.import_module

    def broken(name, *args):
        if name == 'mmdet.registry':
            raise AssertionError('MMCV==2.2.0 is used but incompatible')
        return real_import(name, *args)

    monkeypatch.setattr(registry.importlib, 'import_module', broken)
    with pytest.raises(ImportError, match=r'mmdet is installed but .*MMCV==2.2.0'):
        registry.register_modules([_Probe])


def test_runner_types_are_allow_listed(tmp_path):
    """What a Runner checkpoint holds (HistoryBuffer, numpy arrays/scalars) loads weights-only."""
    import numpy as np
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance('localattn-test')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 0.1)
    hub.update_info('dataset_meta', {'classes': ('a', 'b'), 'palette': np.zeros((2, 3), np.uint8)})
    state = {'meta': {'seed': np.int64(3), 'hub': hub.state_dict()},
             'state_dict': {'w': torch.ones(2)}, 'arr': np.arange(4, dtype=np.float32)}
    path = tmp_path / 'runner_like.pth'
    torch.save(state, path)
    loaded = ckpt.load_local_checkpoint(str(path))
    assert isinstance(loaded['meta']['hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert loaded['meta']['seed'] == 3
    np.testing.assert_array_equal(loaded['arr'], np.arange(4, dtype=np.float32))


class Payload:
    """A pickled object that is not on the allow-list (it could be anything)."""

    def __reduce__(self):
        return (print, ('payload executed',))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    from mmengine.runner import load_checkpoint
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'weight': torch.zeros(2, 2)}, 'extra': Payload()}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match='add_safe_globals') as info:
        ckpt.load_local_checkpoint(str(path))
    assert 'print' in str(info.value)  # names the refused global
    # mmengine's own entry point (load_from / init_cfg / --resume) goes through the same loader.
    with pytest.raises(pickle.UnpicklingError, match='Refused to load checkpoint'):
        load_checkpoint(torch.nn.Linear(2, 2), str(path))
    assert 'payload executed' not in capsys.readouterr().out


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='can not be found'):
        ckpt.load_local_checkpoint(str(tmp_path / 'nope.pth'))


def test_install_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ckpt.install()
        ckpt.install()


def test_getattr_in_checkpoints_is_restricted(tmp_path):
    """The getattr stand-in resolves HistoryBuffer statistics and nothing else."""
    class Evil:
        def __reduce__(self):
            return (getattr, (torch.Tensor, 'add_'))

    path = tmp_path / 'getattr.pth'
    torch.save({'x': Evil()}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match='only HistoryBuffer statistics'):
        ckpt.load_local_checkpoint(str(path))
