"""tools/train.py -> checkpoint -> --resume -> tools/test.py, through the real scripts."""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest

from localattn.checkpoint import load_local_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
pytestmark = pytest.mark.slow

CONFIG = """
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['localattn'], allow_failed_imports=False)
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='NAT', arch=dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                                        mlp_ratio=2.0, kernel_size=3),
                  out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=4, in_channels=128,
              loss=dict(type='CrossEntropyLoss'), topk=(1, )))
data_preprocessor = dict(num_classes=4, mean=[127.5] * 3, std=[64.0] * 3, to_rgb=True)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(type='CustomDataset', data_root='{root}', data_prefix='train',
                                     pipeline=pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type='CustomDataset', data_root='{root}', data_prefix='val',
                                   pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
train_cfg = dict(by_epoch=False, max_iters=4, val_interval=1000)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
"""


def _generate(out_dir):
    spec = importlib.util.spec_from_file_location(
        'generate_synthetic', osp.join(ROOT, 'tools', 'dataset_converters', 'generate_synthetic.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out_dir, num_train=8, num_val=4, size=32, seed=0, tasks=('cls', ))
    return osp.join(out_dir, 'cls')


def _load(path):
    """Load a Runner checkpoint weights-only, as the tools do after `import localattn`."""
    import localattn  # noqa: F401  installs the allow-list
    return load_local_checkpoint(str(path))


def _run(script, *args, cwd):
    cmd = [sys.executable, osp.join(ROOT, 'tools', script), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_resume_test_cycle(tmp_path):
    root = _generate(str(tmp_path / 'data'))
    config = tmp_path / 'tiny_nat_cls.py'
    config.write_text(CONFIG.replace('{root}', root))
    work_dir = tmp_path / 'work'
    elsewhere = tmp_path / 'cwd'  # the tools work from any current directory
    elsewhere.mkdir()

    _run('train.py', str(config), '--work-dir', str(work_dir), '--cfg-options', 'train_cfg.max_iters=2',
         cwd=str(elsewhere))
    first = _load(work_dir / 'iter_2.pth')
    assert first['meta']['iter'] == 2

    log = _run('train.py', str(config), '--work-dir', str(work_dir), '--resume', cwd=str(elsewhere))
    assert 'resumed' in log.lower()
    final = _load(work_dir / 'iter_4.pth')
    assert final['meta']['iter'] == 4
    # AdamW's per-parameter step counter continued from the resumed state: 2 + 2 steps.
    steps = {float(s['step']) for s in final['optimizer']['state'].values()}
    assert steps == {4.0}
    assert first['state_dict'].keys() == final['state_dict'].keys()

    out = _run('test.py', str(config), str(work_dir / 'iter_4.pth'), '--work-dir', str(work_dir),
               '--out', str(tmp_path / 'preds.pkl'), cwd=str(elsewhere))
    assert 'accuracy/top1' in out
    assert (tmp_path / 'preds.pkl').is_file()


def test_resume_from_explicit_checkpoint_in_process(tmp_path):
    """`--resume CKPT` restores the iteration counter (in-process, through localattn.cli)."""
    from localattn import cli
    root = _generate(str(tmp_path / 'data'))
    config = tmp_path / 'tiny_nat_cls.py'
    config.write_text(CONFIG.replace('{root}', root))
    runner = cli.train([str(config), '--work-dir', str(tmp_path / 'a'), '--cfg-options',
                        'train_cfg.max_iters=2'])
    assert runner.iter == 2
    runner = cli.train([str(config), '--work-dir', str(tmp_path / 'b'), '--resume',
                        str(tmp_path / 'a' / 'iter_2.pth'), '--cfg-options', 'train_cfg.max_iters=3'])
    assert runner.iter == 3
    assert (tmp_path / 'b' / 'iter_3.pth').is_file()


def test_bad_scope_is_rejected(tmp_path):
    from localattn import cli
    config = tmp_path / 'bad.py'
    config.write_text("default_scope = 'mmocr'\n")
    with pytest.raises(ValueError, match="default_scope must be one of"):
        cli.train([str(config)])
