"""``tools/analysis_tools/compare_backbones.py``: backbone table, pretrained-weight matching, statistics,
report, failure handling, and a ``--quick`` run end to end through the real train/test tools."""
import argparse
import csv
import glob
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import localattn  # noqa: F401  registers the backbones

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'compare_backbones.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location('localattn_compare_backbones', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cb = _load_tool()


def _row(backbone, task, seed, status='ok', **values):
    return dict(backbone=backbone, task=task, seed=seed, status=status, **values)


# ------------------------------------------------------------------------------------ pure functions
def test_aggregate_mean_and_sample_std():
    rows = [_row('nat', 'seg', s, mIoU=v, step_time_s=t, peak_rss_mb=m)
            for s, v, t, m in ((0, 20.0, 0.3, 900), (1, 22.0, 0.5, 1000), (2, 24.0, 0.4, 950))]
    rows += [_row('swin', 'seg', 0, mIoU=10.0), _row('swin', 'seg', 1, status='failed', mIoU=99.0)]
    stats = cb.aggregate(rows)
    nat = stats['nat']
    assert nat['mIoU (%)'] == cb.Stat(22.0, 2.0, 3)
    assert nat['seg s/iter'].mean == pytest.approx(0.4) and nat['seg s/iter'].std == pytest.approx(0.1)
    assert nat['seg peak mem (MB)'].mean == pytest.approx(950)  # RSS where no CUDA memory is logged
    assert stats['swin']['mIoU (%)'] == cb.Stat(10.0, None, 1)  # the failed run is not averaged
    assert 'box mAP (%)' not in nat
    # CUDA memory, where logged, is the peak memory
    assert cb.metric_value(dict(peak_cuda_mb=300.0, peak_rss_mb=2000.0), 'peak_mem_mb') == 300.0
    assert cb.metric_value(dict(peak_cuda_mb='', peak_rss_mb=2000.0), 'peak_mem_mb') == 2000.0


def test_winner_sentences():
    miou = cb.Metric('seg', 'mIoU', 'mIoU (%)', True)
    step = cb.Metric('seg', 'step_time_s', 'seg s/iter', False, 3)
    clear = {'nat': {'mIoU (%)': cb.Stat(30.0, 1.0, 3)}, 'swin': {'mIoU (%)': cb.Stat(25.0, 2.0, 3)},
             'resnet': {'mIoU (%)': cb.Stat(20.0, 0.5, 3)}}
    text = cb.winner_sentence(miou, clear)
    assert 'NAT wins with 30.00 ± 1.00' in text and '5.00 (20%) higher than the runner-up Swin' in text
    assert 'exceeds the larger std (2.00)' in text
    close = {'nat': {'mIoU (%)': cb.Stat(30.0, 1.0, 3)}, 'swin': {'mIoU (%)': cb.Stat(29.0, 1.5, 3)}}
    assert 'within the larger std (1.50): not a clear win' in cb.winner_sentence(miou, close)
    times = {'nat': {'seg s/iter': cb.Stat(0.4, None, 1)}, 'resnet': {'seg s/iter': cb.Stat(0.3, None, 1)}}
    text = cb.winner_sentence(step, times)
    assert 'ResNet-18 (narrow) wins with 0.300' in text and 'lower than the runner-up NAT' in text
    assert 'single seed' in text
    assert cb.winner_sentence(miou, {'nat': {}}) is None
    assert 'no other backbone' in cb.winner_sentence(miou, {'nat': {'mIoU (%)': cb.Stat(1.0, None, 1)}})


def test_markdown_table_and_failures():
    rows = [_row('nat', 'seg', 0, mIoU=20.0), _row('nat', 'seg', 1, mIoU=24.0),
            _row('resnet', 'seg', 0, mIoU=10.0), _row('resnet', 'seg', 1, status='failed', error='exit code 1\nx',
                                                       log='r.log')]
    text = cb.render_markdown(rows, {'nat': (1.23, 0.07), 'resnet': (2.8, 0.158)}, dict(profile='quick'))
    assert 'meaningless' in text
    table = [line for line in text.splitlines() if line.startswith('| ')]
    assert [c.strip() for c in table[0].split('|')[1:4]] == ['backbone', 'params (M)', 'FLOPs (G)']
    nat = next(line for line in table if line.startswith('| NAT '))
    assert '22.00 ± 2.83' in nat and '1.23' in nat and nat.rstrip(' |').endswith('-')
    resnet = next(line for line in table if line.startswith('| ResNet'))
    assert 'seg seed 1' in resnet  # the failed run is listed in the table
    assert 'FAILED runs (1)' in text and 'exit code 1 (log: `r.log`)' in text
    assert '**mIoU (%)**' in text and 'box mAP' not in text  # only the metrics of the tasks run


def test_run_measurements():
    entries = [dict(loss=1.0, time=t) for t in (5.0, 1.0, 1.2)] + [dict(mIoU=3.0, time=0.01)]
    assert cb.step_time(entries) == pytest.approx(1.1)  # first entry (warm-up) and the val entry skipped
    assert cb.step_time([dict(loss=1.0, time=2.0)]) == 2.0
    assert cb.step_time([dict(mIoU=1.0)]) is None
    assert cb.peak_cuda_mb([dict(memory=10), dict(memory=30), dict(loss=1)]) == 30.0
    out = f'Iter(train) ...\n{cb.PEAK_RSS_MARK} 2048000\n'
    assert cb.peak_rss_mb(out) == pytest.approx(2048000 / (1024 * 1024 if sys.platform == 'darwin' else 1024))
    assert cb.peak_rss_mb('no line') is None


def test_schedule_is_stretched_to_the_iterations():
    demo_sched = [dict(type='LinearLR', begin=0, end=30), dict(type='PolyLR', begin=30, end=1000)]
    assert cb.stretch_schedulers(demo_sched, 1000, 1000) == demo_sched
    assert cb.stretch_schedulers(demo_sched, 1000, 2000) == [dict(type='LinearLR', begin=0, end=60),
                                                             dict(type='PolyLR', begin=60, end=2000)]
    cosine = [dict(type='CosineAnnealingLR', begin=50, end=600, T_max=550)]
    assert cb.stretch_schedulers(cosine, 600, 4) == [dict(type='CosineAnnealingLR', begin=0, end=4, T_max=4)]


def test_settings_follow_the_demo_profile(monkeypatch):
    args = cb.parse_args([])
    settings = cb.settings_from(args)
    for key, value in cb.demo.PROFILES['full'].items():
        assert settings[key] == value
    # keys the demo may add (or lack) are read defensively; the command line wins
    monkeypatch.setattr(cb.demo, 'PROFILES', {'full': dict(seg_iters=7, pretrain_iters=5)})
    settings = cb.settings_from(cb.parse_args(['--det-iters', '3']))
    assert (settings['seg_iters'], settings['det_iters'], settings['pretrain_iters']) == (7, 3, 5)
    assert settings['num_train'] == cb.FALLBACK_PROFILES['full']['num_train']
    assert cb.settings_from(cb.parse_args(['--pretrain-iters', '0']))['pretrain_iters'] == 0


# -------------------------------------------------------------------------------------- backbones
def test_every_backbone_builds_in_every_scope_with_the_demo_widths():
    with cb.quiet_init_logs():
        cb.check_widths(cb.BACKBONES, cb.SCOPES)  # asserts (32, 64, 128, 256) for all of them
    assert set(cb.LABELS) == set(cb.BACKBONES)


def test_dinat_dilations_fit_the_maps():
    arch, dilations = cb._DINAT['arch'], cb._DINAT['dilations']
    assert [len(d) for d in dilations] == list(arch['depths'])
    for size in (128, 112):  # dense inputs, classification crops
        for level, level_dilations in enumerate(dilations[:3]):  # level 3 is smaller than any 7x7 window
            side = -(-size // (4 * 2**level))
            assert all(arch['kernel_size'] * d <= side for d in level_dilations), (size, level)
    assert any(d > 1 for level in dilations for d in level)  # it is not plain NAT


def test_nat_and_qnavit_entries_are_the_demo_backbones():
    from mmengine.config import Config
    for config, name in ((cb.demo.SEG_CONFIG, 'nat'), (cb.demo.DET_CONFIG, 'nat'),
                         (osp.join(ROOT, 'configs', '_demo_', 'upernet_qnavit-demo_synthetic-128x128.py'), 'qnavit')):
        backbone = Config.fromfile(config).model.backbone.to_dict()
        ours = cb.backbone_cfg(name, 'mmseg')
        for key in ('type', 'arch', 'drop_path_rate'):
            assert backbone[key] == ours[key], (config, key)


def test_no_weight_decay_exactly_on_norms_position_biases_and_queries():
    """The optimiser keys treat every backbone alike and leave the (shared) heads as the demo has them."""
    import importlib

    from mmengine.registry import DefaultScope
    from torch.nn.modules.batchnorm import _BatchNorm
    special = ('rpb', 'relative_position_bias_table', 'query', 'attn_scale')
    for task in ('seg', 'det'):
        cfg = cb.task_config(cb.TASKS[task], 'nat', 4, 4)
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
        assert all(keys[k]['decay_mult'] == 0 for k in keys)
        registry = importlib.import_module(f'{cb.TASKS[task].scope}.registry').MODELS
        with DefaultScope.overwrite_default_scope(cb.TASKS[task].scope), cb.quiet_init_logs():
            model = registry.build(cfg.model)
            heads = [n for n, _ in model.named_parameters() if not n.startswith('backbone.')]
            assert heads and not [n for n in heads if any(k in n for k in cb.EXTRA_NO_DECAY_KEYS)]
            for name in cb.BACKBONES:
                backbone = cb.build_backbone(name, cb.TASKS[task].scope)
                for module_name, module in backbone.named_modules():
                    is_norm = isinstance(module, (_BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm))
                    for param_name, _ in module.named_parameters(recurse=False):
                        full = f'backbone.{module_name}.{param_name}'
                        no_decay = any(k in full for k in keys)
                        assert no_decay == (is_norm or param_name in special), (name, full)


@pytest.mark.parametrize('name', list(cb.BACKBONES))
def test_classification_weights_load_completely_into_the_dense_backbones(name, tmp_path):
    """mmpretrain's Swin / ResNet and mmseg's / mmdet's have the same keys, shapes and computation."""
    with cb.quiet_init_logs():
        source = cb.build_backbone(name, 'mmpretrain')
        source.init_weights()
        with torch.no_grad():  # values no initialiser produces
            for param in source.parameters():
                param.add_(torch.randn_like(param) * 0.01)
        path = str(tmp_path / 'cls.pth')
        torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()},
                    'meta': {}}, path)
        for scope in ('mmseg', 'mmdet'):
            assert cb.verify_pretrained(name, scope, path) == 1.0


def test_pretraining_config_and_fine_tuning_options(tmp_path):
    """The classifier of the pretraining stage (demo cls config, backbone swapped, all levels out) and the
    options that start a segmenter from its checkpoint, applied as tools/train.py applies them."""
    import importlib

    from mmengine.config import DictAction
    from mmengine.registry import DefaultScope
    with cb.quiet_init_logs():
        cls_cfg = cb.task_config(cb.TASKS['cls'], 'swin', 3, 3)
        assert cls_cfg.model.backbone == cb.backbone_cfg('swin', 'mmpretrain')
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            classifier = importlib.import_module('mmpretrain.registry').MODELS.build(cls_cfg.model)
            classifier.init_weights()
            classifier.eval()
            with torch.no_grad():  # 112 px crops of the cls pipeline, 4 classes
                assert classifier(torch.randn(2, 3, 112, 112), mode='tensor').shape == (2, 4)
        path = str(tmp_path / 'iter_3.pth')
        torch.save({'state_dict': classifier.state_dict()}, path)

        seg_cfg = cb.task_config(cb.TASKS['seg'], 'swin', 4, 4)
        parser = argparse.ArgumentParser()
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        seg_cfg.merge_from_dict(parser.parse_args(['--cfg-options', *cb.pretrained_options(path)]).cfg_options)
        with DefaultScope.overwrite_default_scope('mmseg'):
            segmenter = importlib.import_module('mmseg.registry').MODELS.build(seg_cfg.model)
            segmenter.init_weights()
        for key, value in segmenter.backbone.state_dict().items():
            assert torch.equal(value, classifier.backbone.state_dict()[key]), key
        assert cb.verify_pretrained('swin', 'mmseg', path) == 1.0


def test_a_checkpoint_that_does_not_fit_fails_loudly(tmp_path):
    with cb.quiet_init_logs():
        swin = cb.build_backbone('swin', 'mmpretrain')
        path = str(tmp_path / 'swin.pth')
        torch.save({'state_dict': {f'backbone.{k}': v for k, v in swin.state_dict().items()}}, path)
        with pytest.raises(cb.PretrainMismatch, match='fills 0/'):
            cb.verify_pretrained('resnet', 'mmseg', path)
        state = {f'backbone.{k}': v for k, v in swin.state_dict().items() if 'stages.3' not in k}
        torch.save({'state_dict': state}, path)
        with pytest.raises(cb.PretrainMismatch, match='not loaded: stages.3'):
            cb.verify_pretrained('swin', 'mmdet', path)


# ------------------------------------------------------------------------------------ end to end
def test_failed_runs_make_the_exit_status_1(tmp_path, monkeypatch, capsys):
    def fail(self, cmd, log_file):
        raise cb.RunFailed(f'exit code 3; log {log_file}')

    monkeypatch.setattr(cb.Runner, 'command', fail)
    monkeypatch.setattr(cb, 'check_widths', lambda *a: None)
    monkeypatch.setattr(cb, 'complexity', lambda name: (1.0, 0.1))
    code = cb.main(['--quick', '--backbones', 'nat', '--tasks', 'seg', '--seeds', '0', '1', '--parallel', '2',
                    '--threads', '2', '--work-dir', str(tmp_path)])
    assert code == 1
    assert 'COMPARISON INCOMPLETE: 2 run(s) FAILED' in capsys.readouterr().err
    with open(tmp_path / 'compare.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['task'], r['seed'], r['status']) for r in rows] == [('seg', '0', 'failed'), ('seg', '1', 'failed')]
    assert 'exit code 3' in rows[0]['error']
    text = (tmp_path / 'compare.md').read_text()
    assert 'FAILED runs (2)' in text and 'seg seed 0, seg seed 1' in text


def _tool(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg',
               PYTHONPATH=osp.join(ROOT, 'projects'))
    return subprocess.run([sys.executable, TOOL, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_quick_comparison_end_to_end(tmp_path):
    """nat and resnet: 4 iterations of UPerNet each through tools/train.py, scored by tools/test.py; then what
    a rerun would find (resumability). (The pretraining stage adds 2 processes: tested in-process above.)"""
    work = tmp_path / 'compare'
    args = ['--quick', '--backbones', 'nat', 'resnet', '--tasks', 'seg', '--seeds', '0', '--pretrain-iters', '0',
            '--work-dir', str(work)]
    proc = _tool(*args, cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    with open(work / 'compare.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['task'], r['backbone'], r['status']) for r in rows] == [('seg', 'nat', 'ok'), ('seg', 'resnet', 'ok')]
    for row in rows:
        assert float(row['step_time_s']) > 0 and float(row['peak_rss_mb']) > 100
        assert 0 <= float(row['mIoU']) <= 100 and row['pretrain_iters'] == '0' and not row['pretrained_from']
        assert osp.isfile(row['log']) and osp.isfile(osp.join(row['run_dir'], 'iter_4.pth'))
    text = (work / 'compare.md').read_text()
    assert 'meaningless' in text and '| NAT ' in text and '| ResNet-18 (narrow) ' in text
    assert '**mIoU (%)** (higher is better)' in text
    assert (work / 'compare.png').stat().st_size > 1000
    assert (work / 'configs' / 'seg_resnet.py').is_file()

    # resumable: a rerun with the same settings finds every result; other settings find none
    import json
    with open(work / 'data' / 'meta.json') as f:
        data_params = json.load(f)['params']
    settings = cb.settings_from(cb.parse_args(args))
    pretrain, finetune = cb.plan_runs(settings, ['nat', 'resnet'], [0], ['seg'], str(work))
    assert pretrain == []
    cached = [cb.cached_result(run, data_params) for run in finetune]
    assert [(r['task'], r['backbone'], str(r['mIoU'])) for r in cached] == [
        (r['task'], r['backbone'], r['mIoU']) for r in rows]
    assert cb.cached_result(finetune[0], dict(data_params, num_train=9)) is None
    finetune[0].seed = 1
    assert cb.cached_result(finetune[0], data_params) is None

    # per-class IoU from the test logs, in the CSV and the markdown
    for row in rows:
        assert {f'IoU_{n}' for n in ('background', 'circle', 'square', 'star', 'triangle')} <= set(row)
    assert 'Per-class IoU of the segmenters' in text

    # --report-only trains nothing and reports the runs already there; a missing one is listed as failed
    before = sorted(glob.glob(str(work / 'runs' / '**' / '*.pth'), recursive=True))
    os.remove(work / 'compare.csv')
    proc = _tool('--report-only', '--backbones', 'nat', 'resnet', '--tasks', 'seg', '--seeds', '0', '--quick',
                 '--work-dir', str(work), cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    with open(work / 'compare.csv') as f:
        again = list(csv.DictReader(f))
    assert [(r['backbone'], r['mIoU']) for r in again] == [(r['backbone'], r['mIoU']) for r in rows]
    assert sorted(glob.glob(str(work / 'runs' / '**' / '*.pth'), recursive=True)) == before
    proc = _tool('--report-only', '--backbones', 'nat', '--tasks', 'seg', '--seeds', '0', '1', '--quick',
                 '--work-dir', str(work), cwd=str(tmp_path))
    text = (work / 'compare.md').read_text()
    assert proc.returncode == 1 and '## Not run (1)' in text and 'seg nat seed 1: no result' in text
    assert 'FAILED' not in text
