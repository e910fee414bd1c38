"""The demo configs and user tools, end to end through the real scripts.

* ``tools/demo.py --quick``: data -> tools/train.py (mmseg UPerNet-NAT, mmdet Mask R-CNN-NAT) ->
  tools/test.py (single scale, ``--tta`` multi-scale + flip, ``--show-dir``) -> plot_curves -> summary.
* mmpretrain demo config: train with a checkpoint, interrupt, ``--resume``, test.
* ``tools/dist_train.sh`` with 2 gloo processes (QnA-ViT classifier).
* ``plot_curves.py`` and ``browse_dataset.py``.

Everything runs on tiny data (a few 64-128 px images) for a few iterations.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import localattn  # noqa: F401,E402  installs the weights-only allow-list used by torch.load below

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
DEMO_CONFIGS = osp.join(ROOT, 'configs', '_demo_')
SEG_CONFIG = osp.join(DEMO_CONFIGS, 'upernet_nat-demo_synthetic-128x128.py')
DET_CONFIG = osp.join(DEMO_CONFIGS, 'mask-rcnn_nat-demo_fpn_synthetic.py')
NAT_CLS_CONFIG = osp.join(DEMO_CONFIGS, 'nat-demo_synthetic-cls.py')
QNA_CLS_CONFIG = osp.join(DEMO_CONFIGS, 'qnavit-demo_synthetic-cls.py')
QNA_SEG_CONFIG = osp.join(DEMO_CONFIGS, 'upernet_qnavit-demo_synthetic-128x128.py')


def _load(name, *path):
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, *path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load('localattn_demo_tool', 'demo.py')


def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1',
            'MPLBACKEND': 'Agg'}


def _run(cmd, cwd, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{cmd}\n' + out[-5000:]
    return out


def _tool(script, *args, cwd):
    return _run([sys.executable, osp.join(TOOLS, script), *args], cwd=cwd)


def _scalars(work_dir):
    """Records of every run's scalars.json under ``work_dir``, oldest run first."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            runs.append([json.loads(line) for line in f if line.strip()])
    return runs


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    demo.load_generator().generate(root, num_train=8, num_val=4, size=64, seed=0,
                                   tasks=('det', 'seg', 'cls'))
    return root


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize('config', [SEG_CONFIG, DET_CONFIG, NAT_CLS_CONFIG, QNA_CLS_CONFIG,
                                    QNA_SEG_CONFIG])
def test_demo_configs_default_data_root_is_repo_relative(config, tmp_path, monkeypatch):
    """`{{ fileDirname }}` makes the default data root independent of the current directory."""
    from mmengine.config import Config
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(config)
    expected = osp.join(ROOT, 'data', 'synthetic')
    for split in ('train', 'val', 'test'):
        root = cfg[f'{split}_dataloader'].dataset.data_root
        assert osp.normpath(root).startswith(expected), root
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.val_interval == cfg.train_cfg.max_iters
    assert cfg.default_hooks.checkpoint.interval == cfg.train_cfg.max_iters
    if config == SEG_CONFIG:
        assert cfg.tta_model.type == 'SegTTAModel' and 'tta_pipeline' in cfg
        assert cfg.model.decode_head.num_classes == 5
    if config == DET_CONFIG:
        assert cfg.model.roi_head.bbox_head.num_classes == 4
        assert cfg.val_evaluator.ann_file.startswith(cfg.data_root)


def test_demo_data_root_options_point_every_loader_at_the_root(data_root):
    import argparse

    from mmengine.config import Config, DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    for config, scope, sub in ((SEG_CONFIG, 'mmseg', 'seg'), (DET_CONFIG, 'mmdet', 'det'),
                               (NAT_CLS_CONFIG, 'mmpretrain', 'cls')):
        cfg = Config.fromfile(config)
        args = parser.parse_args(['--cfg-options', *demo.data_root_options(scope, data_root)])
        cfg.merge_from_dict(args.cfg_options)
        for split in ('train', 'val', 'test'):
            assert osp.normpath(cfg[f'{split}_dataloader'].dataset.data_root) == \
                osp.join(data_root, sub)
        if scope == 'mmdet':
            for key in ('val_evaluator', 'test_evaluator'):
                assert osp.isfile(cfg[key].ann_file)


def test_demo_full_profile_trains_the_configs_own_schedules():
    """The full demo trains exactly the configs' ``max_iters`` (their LR schedules end there)."""
    from mmengine.config import Config
    full = demo.PROFILES['full']
    for config, key in ((SEG_CONFIG, 'seg_iters'), (DET_CONFIG, 'det_iters')):
        cfg = Config.fromfile(config)
        assert cfg.train_cfg.max_iters == full[key]
        assert max(s.get('end', 0) for s in cfg.param_scheduler) == full[key]


def test_demo_threads_follow_the_cores_idle_now(monkeypatch):
    """Threads = idle cores, measured over a short window from /proc/stat (the load average lags
    behind: right after `make setup` it still counts the cores as busy)."""
    read_proc_stat = demo._cpu_times
    samples = iter([(1000, 4000), (1150, 4200)])  # 150 of 200 jiffies idle: a quarter busy
    monkeypatch.setattr(demo, '_cpu_times', lambda: next(samples))
    monkeypatch.setattr(demo.time, 'sleep', lambda s: None)
    monkeypatch.setattr(demo.os, 'cpu_count', lambda: 4)
    monkeypatch.setattr(demo.os, 'getloadavg', lambda: (4.0, 4.0, 4.0))  # stale: must not be used
    assert demo.busy_cores() == pytest.approx(1.0)
    monkeypatch.setattr(demo, '_cpu_times', lambda: None)  # no /proc/stat: the load average
    assert demo.busy_cores() == 4.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    assert demo.auto_threads(busy=0.0) == cores
    assert demo.auto_threads(busy=cores + 3.0) == 1
    if sys.platform.startswith('linux'):
        times = read_proc_stat()
        assert times is not None and 0 <= times[0] <= times[1]


MMSEG_CLASS_TABLE = """
11/28 23:25:25 - mmengine - INFO - per class results:
11/28 23:25:25 - mmengine - INFO -
+------------+-------+-------+
|   Class    |  IoU  |  Acc  |
+------------+-------+-------+
| background | 93.61 | 97.02 |
|   circle   | 14.81 | 20.55 |
|   square   |  9.72 | 11.03 |
|    star    |  nan  |  nan  |
|  triangle  |  1.42 |  1.5  |
+------------+-------+-------+
11/28 23:25:25 - mmengine - INFO - Iter(test) [48/48]    aAcc: 82.2400  mIoU: 23.2500
"""


def test_demo_parses_the_per_class_table_of_the_last_evaluation():
    log = MMSEG_CLASS_TABLE.replace('93.61', '50.00') + MMSEG_CLASS_TABLE  # the last table wins
    table = demo.parse_class_table(log)
    assert list(table) == ['background', 'circle', 'square', 'star', 'triangle']
    assert table['background'] == {'IoU': 93.61, 'Acc': 97.02}
    assert table['triangle']['Acc'] == 1.5
    assert table['star']['IoU'] != table['star']['IoU']  # nan: a class absent from the data
    assert demo.parse_class_table('no evaluation here') == {}


# ----------------------------------------------------------------------------- demo end to end
@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """`tools/demo.py --quick`: tools/train.py for mmseg and mmdet demo configs (checkpoints),
    tools/test.py single-scale and --tta (multi-scale + flip) mIoU, box/mask mAP, pictures,
    plots and the summary."""
    work, data = tmp_path / 'demo', tmp_path / 'data'
    elsewhere = tmp_path / 'cwd'  # the demo works from any current directory
    elsewhere.mkdir()
    out = _run([sys.executable, osp.join(TOOLS, 'demo.py'), '--quick', '--work-dir', str(work),
                '--data-root', str(data)], cwd=str(elsewhere), timeout=900)
    assert 'Iter(train)' in out  # progress is streamed
    iters = demo.PROFILES['quick']
    for name, n in (('seg', iters['seg_iters']), ('det', iters['det_iters'])):
        ckpt = torch.load(work / name / f'iter_{n}.pth', weights_only=True, map_location='cpu')
        assert ckpt['meta']['iter'] == n

    summary = json.loads((work / 'summary.json').read_text())
    assert summary['profile'] == 'quick'
    scores = summary['scores']
    for value in (scores['seg']['mIoU'], scores['seg']['mIoU_ms_flip'], scores['det']['bbox_mAP'],
                  scores['det']['segm_mAP']):
        assert isinstance(value, float) and 0.0 <= value <= 100.0
    # the --tta run really evaluated the multi-scale + flip model
    tta_log = (work / 'logs' / 'seg_test_tta.log').read_text()
    assert 'SegTTAModel' in tta_log or 'TestTimeAug' in tta_log
    assert 'mIoU' in tta_log

    # per class: the segmenter's IoU of all five classes, Mask R-CNN's mask AP of the four shapes
    per_class = scores['per_class']
    assert list(per_class) == ['background', 'circle', 'square', 'star', 'triangle']
    for name, value in per_class.items():
        assert isinstance(value['IoU'], float)
        assert (value['mask_AP'] is None) == (name == 'background')
    # Mask R-CNN started from the segmenter's backbone (the load report of NAT's init_weights)
    det_log = (work / 'logs' / 'det_train.log').read_text()
    assert 'iter_%d.pth' % iters['seg_iters'] in det_log and 'missing (kept at init): none' in det_log

    md = (work / 'summary.md').read_text()
    assert 'multi-scale + flip' in md and 'mask mAP' in md and 'Per class' in md
    for key in ('seg', 'det'):
        plot = summary['plots'][key]
        plot = plot if osp.isabs(plot) else osp.join(str(elsewhere), plot)
        assert osp.getsize(plot) > 1000
    assert glob.glob(str(work / 'pictures' / 'seg' / '**' / '*.png'), recursive=True)
    assert glob.glob(str(work / 'pictures' / 'det' / '*.png'))
    assert (work / 'pictures' / 'seg_predictions.png').is_file()


# ----------------------------------------------------------------------------- mmpretrain + resume
@pytest.mark.slow
def test_cls_train_interrupt_resume_test(data_root, tmp_path):
    """Train the NAT classifier to iter 2 (checkpoint), 'interrupt', resume to iter 4, test."""
    work = tmp_path / 'work'
    options = demo.data_root_options('mmpretrain', data_root) + [
        'train_dataloader.batch_size=4', 'val_dataloader.batch_size=4', 'test_dataloader.batch_size=4',
        'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=2',
        'train_cfg.val_interval=1000']
    _tool('train.py', NAT_CLS_CONFIG, '--work-dir', str(work), '--cfg-options', *options,
          'train_cfg.max_iters=2', cwd=str(tmp_path))
    first = torch.load(work / 'iter_2.pth', weights_only=True, map_location='cpu')
    assert first['meta']['iter'] == 2
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')

    log = _tool('train.py', NAT_CLS_CONFIG, '--work-dir', str(work), '--resume', '--cfg-options',
                *options, 'train_cfg.max_iters=4', cwd=str(tmp_path))
    assert 'resumed epoch: 0, iter: 2' in log
    final = torch.load(work / 'iter_4.pth', weights_only=True, map_location='cpu')
    assert final['meta']['iter'] == 4
    runs = _scalars(str(work))
    assert len(runs) == 2
    assert [r['step'] for r in runs[0] if 'loss' in r] == [1, 2]
    assert [r['step'] for r in runs[1] if 'loss' in r] == [3, 4]  # continued from iter 2
    assert {float(s['step']) for s in final['optimizer']['state'].values()} == {4.0}

    out = _tool('test.py', NAT_CLS_CONFIG, str(work / 'iter_4.pth'), '--work-dir',
                str(tmp_path / 'test'), '--cfg-options', *options, cwd=str(tmp_path))
    assert 'accuracy/top1' in out


# ----------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_dist_train_two_gloo_processes(data_root, tmp_path):
    """tools/dist_train.sh: 2 torchrun processes (gloo on CPU) train the QnA-ViT classifier."""
    work = tmp_path / 'dist'
    cmd = ['bash', osp.join(TOOLS, 'dist_train.sh'), QNA_CLS_CONFIG, '2', '--work-dir', str(work),
           '--cfg-options', *demo.data_root_options('mmpretrain', data_root),
           'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
           'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2']
    # No PORT: dist_train.sh lets torchrun bind a free port itself and keep it (--standalone). A port
    # picked here by binding and releasing it could be taken by another process before torchrun
    # binds it (the cause of this test's occasional failures).
    env = {**_env(), 'PYTHON': sys.executable}
    env.pop('PORT', None)
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'Distributed training: True' in out
    assert 'accuracy/top1' in out
    ckpt = torch.load(work / 'iter_2.pth', weights_only=True, map_location='cpu')
    assert ckpt['meta']['iter'] == 2
    assert any(k.startswith('backbone.') for k in ckpt['state_dict'])  # no DDP 'module.' prefix


@pytest.mark.parametrize('script', ['dist_train.sh', 'dist_test.sh'])
def test_dist_scripts_let_torchrun_hold_the_port(script):
    """Single node without PORT: --standalone (torchrun binds port 0 and keeps it); PORT or several
    nodes: the fixed rendezvous flags."""
    args = ['cfg.py', 'ckpt.pth', '2'] if script == 'dist_test.sh' else ['cfg.py', '2']

    def launch(**env):
        base = {k: v for k, v in _env().items() if k not in ('PORT', 'NNODES')}
        proc = subprocess.run(['bash', osp.join(TOOLS, script), *args, '--work-dir', 'w'],
                              capture_output=True, text=True, env={**base, 'PYTHON': 'echo', **env})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    cmd = launch()
    assert '--standalone' in cmd and not any(a.startswith('--master_port') for a in cmd)
    assert cmd[-4:] == ['--launcher', 'pytorch', '--work-dir', 'w'] and '--nproc_per_node=2' in cmd
    cmd = launch(PORT='29611')
    assert '--master_port=29611' in cmd and '--standalone' not in cmd
    cmd = launch(NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.1', PORT='29612')
    assert {'--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1', '--master_port=29612'} <= set(cmd)


# ----------------------------------------------------------------------------- plot_curves
def _fake_scalars(path, offset=0.0):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        for step in range(10, 110, 10):
            f.write(json.dumps({'lr': 1e-3, 'loss': 2.0 / step + offset, 'iter': step,
                                'step': step}) + '\n')
            if step % 50 == 0:
                f.write(json.dumps({'mIoU': step / 2 + offset, 'coco/bbox_mAP': step / 200,
                                    'step': step}) + '\n')
        f.write('{"loss": 0.1, "st')  # a run still writing: truncated last line


def test_plot_curves_writes_png(tmp_path):
    from PIL import Image
    plot_curves = _load('localattn_plot_curves', 'analysis_tools', 'plot_curves.py')
    a = str(tmp_path / 'a' / '20260101_000000' / 'vis_data' / 'scalars.json')
    b = str(tmp_path / 'b' / '20260101_000000' / 'vis_data' / 'scalars.json')
    _fake_scalars(a)
    _fake_scalars(b, offset=1.0)
    out = tmp_path / 'plots' / 'curves.png'
    # a file and a work dir; `bbox_mAP` resolves to `coco/bbox_mAP`
    assert plot_curves.main([a, str(tmp_path / 'b'), '--keys', 'loss', 'mIoU', 'bbox_mAP',
                             '--out', str(out)]) == 0
    with Image.open(out) as img:
        assert img.format == 'PNG' and img.width > 200 and img.height > 200
    data = plot_curves.collect([a], ['loss', 'mIoU'])
    assert data['loss'][0][0] == [float(s) for s in range(10, 110, 10)]
    assert data['mIoU'][0] == ([50.0, 100.0], [25.0, 50.0])
    assert plot_curves.main([a, '--keys', 'no_such_key', '--out', str(tmp_path / 'x.png')]) == 1


@pytest.mark.slow
def test_plot_curves_cli_on_a_real_log(data_root, tmp_path):
    work = tmp_path / 'work'
    _tool('train.py', NAT_CLS_CONFIG, '--work-dir', str(work), '--cfg-options',
          *demo.data_root_options('mmpretrain', data_root), 'train_cfg.max_iters=2',
          'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
          'train_dataloader.batch_size=4', 'val_dataloader.batch_size=4', cwd=str(tmp_path))
    log = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))[0]
    out = tmp_path / 'curves.png'
    printed = _tool(osp.join('analysis_tools', 'plot_curves.py'), log, '--keys', 'loss',
                    'accuracy/top1', '--out', str(out), cwd=str(tmp_path))
    assert 'saved' in printed and out.stat().st_size > 1000


# ----------------------------------------------------------------------------- browse_dataset
@pytest.mark.parametrize('config,scope,phase', [(SEG_CONFIG, 'mmseg', 'train'),
                                                (DET_CONFIG, 'mmdet', 'val'),
                                                (NAT_CLS_CONFIG, 'mmpretrain', 'train')])
def test_browse_dataset_writes_pictures(config, scope, phase, data_root, tmp_path):
    from PIL import Image
    browse = _load('localattn_browse_dataset', 'analysis_tools', 'browse_dataset.py')
    out = tmp_path / 'browse'
    assert browse.main([config, '--phase', phase, '--output-dir', str(out), '--not-show',
                        '--max-items', '3', '--cfg-options',
                        *demo.data_root_options(scope, data_root)]) == 0
    files = sorted(out.glob('*.png'))
    assert len(files) == 3
    with Image.open(files[0]) as img:
        assert img.width >= 64 and img.height >= 64


def test_browse_dataset_gt_frame_heuristic():
    browse = _load('localattn_browse_dataset', 'analysis_tools', 'browse_dataset.py')
    train = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
             dict(type='RandomResize'), dict(type='PackSegInputs')]
    test = [dict(type='LoadImageFromFile'), dict(type='Resize'), dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')]
    assert not browse._gt_in_original_frame(train)
    assert browse._gt_in_original_frame(test)
    assert not browse._gt_in_original_frame([dict(type='LoadImageFromFile')])
