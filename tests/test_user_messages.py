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


def test_dinat_logs_once_what_small_maps_run_with(monkeypatch):
    from localattn.backbones import NAT, DiNAT, nat
    logged = []
    monkeypatch.setattr(nat, 'print_log', lambda msg, logger=None, level=20: logged.append((level, msg)))
    arch = dict(embed_dims=8, depths=(2, 1), num_heads=(1, 1), kernel_size=7)
    model = DiNAT(arch=arch, dilations=[[1, 8], [2]], out_indices=(0, 1)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 256, 256))  # level 0: 64x64 >= 7*8; level 1: 32x32 >= 7*2
        assert logged == []
        model(torch.randn(1, 3, 128, 96))  # level 0: 32x24 < 56; level 1: 16x12 < 14 along W
        model(torch.randn(1, 3, 64, 64))  # once per model
    assert len(logged) == 1 and logged[0][0] == 20
    message = logged[0][1]
    assert 'DiNAT: for a 128x96 input' in message
    assert 'level 0 (32x24 map) block 1: kernel 7 x dilation 8 does not fit; runs with kernel 4x3, ' \
        'dilation 8x8' in message
    assert 'level 1 (16x12 map) block 0: kernel 7 x dilation 2 does not fit; runs with kernel 7x6' in message
    assert 'block 0: kernel 7 x dilation 1' not in message.split('level 1')[0]  # fitting blocks not listed
    # NAT too (a map smaller than the kernel)
    small = NAT(arch=dict(arch, depths=(1, 1)), out_indices=(1, )).eval()
    with torch.no_grad():
        small(torch.randn(1, 3, 20, 20))
    assert 'NAT: for a 20x20 input' in logged[-1][1] and 'runs with kernel 5x5' in logged[-1][1]


@pytest.mark.slow
def test_export_onnx_shows_progress_and_the_load_report(tmp_path, capsys):
    from importlib.machinery import SourceFileLoader
    from pathlib import Path

    from localattn.analysis.models import build_backbone
    tool = Path(__file__).resolve().parents[1] / 'tools' / 'deployment' / 'export_onnx.py'
    module = SourceFileLoader('export_onnx_progress', str(tool)).load_module()
    spec = "NAT:arch={'embed_dims': 8, 'depths': (1, 1), 'num_heads': (1, 1), 'kernel_size': 3},out_indices=(0, 1)"
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in build_backbone(spec).state_dict().items()}},
               ckpt)
    assert module.main([spec, '--shape', '32', '--checkpoint', str(ckpt), '--out', str(tmp_path / 'm.onnx')]) == 0
    text = capsys.readouterr().out
    steps = [text.index(f'[{i}/4]') for i in range(1, 5)]
    assert steps == sorted(steps), text
    assert f'Loaded {len(build_backbone(spec).state_dict())} tensors from {ckpt} (100.0%' in text
    assert 'missing (kept at init): none' in text and 'M parameters' in text and 'MiB' in text


@pytest.mark.slow
def test_tools_test_show_dir_prints_where_the_pictures_went(tmp_path, capsys):
    import importlib.util
    import os.path as osp

    from localattn import cli
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        'localattn_generate_synthetic_show', osp.join(root, 'tools', 'dataset_converters', 'generate_synthetic.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(str(tmp_path / 'data'), num_train=4, num_val=4, size=32, seed=0, tasks=('cls', ))
    config = osp.join(root, 'configs', '_demo_', 'nat-demo_synthetic-cls.py')
    options = ['--cfg-options', *(f'{s}_dataloader.dataset.data_root={tmp_path}/data/cls'
                                  for s in ('train', 'val', 'test')),
               'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2']
    cli.train([config, '--work-dir', str(tmp_path / 'work'), *options])
    capsys.readouterr()
    show = tmp_path / 'pictures'
    cli.test([config, str(tmp_path / 'work' / 'iter_1.pth'), '--work-dir', str(tmp_path / 'work'),
              '--show-dir', str(show), *options])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith('--show-dir: saved'))
    count, where = int(line.split()[2]), line.split(' in ', 1)[1]
    # mmpretrain draws one sample in `interval` (default: the first of this small set)
    assert count >= 1 and where.startswith(str(show))
    assert len(list(show.rglob('*.png'))) + len(list(show.rglob('*.jpg'))) == count


def test_docs_reliability_and_cpu_arch_dict():
    """docs/reliability.md names existing tests; docs/usage.md's CPU-sized arch dict builds and its
    heads' in_channels match the backbone widths."""
    import os.path as osp
    import re

    from localattn.backbones import NAT
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    with open(osp.join(root, 'docs', 'reliability.md')) as f:
        reliability = f.read()
    named = set(re.findall(r'`(?:tests/)?(test_\w+\.py)`', reliability))
    assert {'test_checkpoint_reliability.py', 'test_kill_resume.py', 'test_input_fuzzing.py',
            'test_pretrained_loading.py'} <= named
    assert all(osp.isfile(osp.join(root, 'tests', name)) for name in named), named
    with open(osp.join(root, 'docs', 'usage.md')) as f:
        usage = f.read()
    block = next(b for b in re.findall(r'```python\n(.*?)```', usage, re.S) if 'arch=dict(' in b)
    scope = {}
    exec(block, scope)
    model = scope['model']
    backbone = NAT(**{k: v for k, v in model['backbone'].items() if k != 'type'})
    assert model['decode_head']['in_channels'] == backbone.num_features
    assert model['auxiliary_head']['in_channels'] == backbone.num_features[2]
    assert "arch='mini'" in usage and 's / iteration' in usage
