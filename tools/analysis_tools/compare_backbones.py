#!/usr/bin/env python
"""Side-by-side of backbones on the demo's synthetic data: same config, schedule and budget, N seeds.

Usage::

    python tools/analysis_tools/compare_backbones.py [--backbones nat dinat qnavit swin resnet]
        [--seeds 0 1 2] [--tasks seg det] [--pretrain-iters N] [--seg-iters N] [--det-iters N]
        [--seg-val-interval N] [--det-val-interval N] [--pretrain-val-interval N]
        [--num-train N] [--num-val N] [--threads N] [--parallel K]
        [--data-root DIR] [--work-dir work_dirs/compare] [--quick] [--force] [--report-only]

What it does, for every backbone of :data:`BACKBONES` (all matched to the demo's tiny NAT: widths
32/64/128/256, 5 blocks) and every seed:

1. (``--pretrain-iters N > 0``) trains an mmpretrain ``ImageClassifier``
   (``configs/_demo_/nat-demo_synthetic-cls.py`` with the backbone swapped) on the synthetic
   classification split, checks in this process that the dense-prediction backbones of mmseg and
   mmdet load *every* parameter of its ``backbone.*`` weights and then compute the same features as
   the classifier's backbone (else the run fails loudly), and fine-tunes from it with
   ``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=CKPT, prefix='backbone.')``;
2. ``seg``: trains UPerNet (``configs/_demo_/upernet_nat-demo_synthetic-128x128.py``, backbone swapped)
   with ``tools/train.py`` and evaluates the final checkpoint with ``tools/test.py`` (mIoU);
3. ``det``: the same with Mask R-CNN (``configs/_demo_/mask-rcnn_nat-demo_fpn_synthetic.py``):
   box and mask mAP.

Everything except the backbone is the same for all backbones: the demo config, the optimiser (its
no-weight-decay keys extended to the norm / bias-table / query names of every backbone:
:data:`EXTRA_NO_DECAY_KEYS`), the schedule, the data and the batch size. Schedule and data default
to the demo's ``full`` profile (``tools/demo.py`` ``PROFILES``; ``--quick``: its ``quick`` profile);
when the number of iterations differs from the config's, the LR schedule is stretched to it. Seeds go
through ``randomness.seed``; the data (generated once, seed of the profile) is the same for all runs.
Every training runs in its own process through a small wrapper that executes ``tools/train.py``
(``runpy``) and prints the process's peak RSS. Runs whose results exist (same settings) are skipped,
so an interrupted comparison resumes; ``--force`` reruns them. A failed run is listed in the outputs
and makes the exit status 1. ``--parallel K`` runs K trainings at once with ``--threads`` split between
them; step times are comparable between runs made with the same ``--threads`` / ``--parallel`` on an
equally loaded machine.

Outputs under ``--work-dir`` (default ``work_dirs/compare``):

* ``compare.csv``: one row per run (training + evaluation of one task, backbone and seed). Columns:

  - ``task`` (``cls`` = pretraining, ``seg``, ``det``), ``backbone``, ``seed``, ``status`` (ok / failed);
  - ``mIoU, aAcc, mAcc`` (seg; percent, from ``tools/test.py`` on the val split);
  - ``bbox_mAP, bbox_mAP_50, segm_mAP, segm_mAP_50`` (det; percent, COCO mAP@[.5:.95] and @.5);
  - ``top1`` (cls; percent, the final validation of the pretraining);
  - ``step_time_s``: seconds per training iteration, the mean of the training ``time`` entries of the
    run's ``vis_data/scalars.json`` (each one mmengine's mean over its logging window), the first tenth
    of them (at least one) skipped as warm-up;
  - ``peak_rss_mb``: peak resident memory of the training process (MB);
  - ``peak_cuda_mb``: max of the ``memory`` entries mmengine logs on CUDA (MB; empty on CPU);
  - ``train_wall_s``: wall time of the training process (s); ``iters``: training iterations;
  - ``pretrain_iters`` (0: from scratch; empty for the pretraining runs), ``pretrained_from`` (the
    checkpoint), ``pretrain_loaded`` (fraction of the backbone's parameter values it filled: 1.0);
  - ``run_dir``, ``log`` (the training log), ``error`` (why a run failed);
  - ``IoU_<class>`` (seg; percent, single scale, from the per-class table of the run's test log).
* ``compare.md``: one row per backbone: ``params (M)`` and ``FLOPs (G)`` of the backbone alone
  (multiply-adds of one 1x3x128x128 forward, attention counted analytically by
  :func:`localattn.analysis.count_flops_params`, the counter of ``get_flops.py``), then ``mean ± std``
  over seeds (sample std; the mean alone for one seed) of every metric above (scores in percent,
  s/iter, peak memory in MB: CUDA memory where logged, else peak RSS), the number of seeds and the
  failed runs; then one sentence per metric naming the best backbone, its lead over the runner-up and
  whether that lead exceeds the larger of their two stds; then the segmenters' per-class IoU
  (mean ± std over seeds).
* ``compare.png``: bars of mIoU and mask mAP (error bars: std over seeds) and of s/iter.
* ``configs/<task>_<backbone>.py`` (the exact config of each task and backbone),
  ``runs/<task>/<backbone>/seed<k>/`` (checkpoints, test results, ``result.json``) and
  ``logs/<task>_<backbone>_seed<k>_{train,test}.log``.

``--report-only`` trains nothing and writes the reports of the runs already under ``--work-dir``
(for example after ``--tasks seg`` and ``--tasks det`` were run separately).

``--quick`` trains a handful of iterations on a handful of images: a smoke test whose scores are
meaningless. The default data root is ``<work-dir>/data`` so that the comparison never rewrites the
data a demo run is reading.
"""

import argparse
import contextlib
import copy
import csv
import dataclasses
import glob
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import os.path as osp
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools')
CLS_CONFIG = osp.join(ROOT, 'configs', '_demo_', 'nat-demo_synthetic-cls.py')


def _load_demo():
    """``tools/demo.py`` as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location('localattn_demo', osp.join(TOOLS, 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()

# --------------------------------------------------------------------------------------- backbones
#: Output channels of every backbone's four levels (the necks and heads are the demo's for these).
WIDTHS = (32, 64, 128, 256)

_NAT = dict(type='NAT',
            arch=dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2., kernel_size=7),
            drop_path_rate=0.0)
# DiNAT alternates local and dilated NA; the dilated blocks use the largest dilation whose 7x7 neighbourhood
# fits the level's map (DiNAT's rule). At 128x128 the maps are 32/16/8/4 (28/14/7/4 for the 112 px
# classification crops): dilation 4 and 2 fit levels 0 and 1 (7*4 = 28, 7*2 = 14); level 2 (8x8) has no room
# for dilation 2 (14 > 8), so both its blocks stay local; level 3 (4x4) is smaller than the kernel for any
# dilation. So DiNAT differs from NAT in levels 0-1, whose single block is the dilated one.
_DINAT = dict(_NAT, type='DiNAT', dilations=((4, ), (2, ), (1, 1), (1, )))
# configs/_demo_/upernet_qnavit-demo_synthetic-128x128.py: windows of 8 (stride 16), 4 (stride 32)
_QNAVIT = dict(type='QnAViT',
               arch=dict(embed_dims=32, qna_depths=(1, 1, 1, 0), msa_depths=(0, 0, 1, 1), qna_heads=(2, 4, 8, 16),
                         msa_heads=(1, 2, 4, 8), window_sizes=(7, 7, 8, 4), qna_kernel_size=3, mlp_ratio=2),
               drop_path_rate=0.0)
# mmseg's and mmdet's SwinTransformer (same arguments); mmpretrain's takes an arch dict, the MLP ratio
# through its block configs, and pads maps smaller than the window (the 4x4 last level) as the dense
# versions do. Their state dicts have the same keys and shapes (checked by the tests and before every
# fine-tuning).
_SWIN = dict(type='SwinTransformer', embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7,
             mlp_ratio=2, drop_path_rate=0.0)
_SWIN_MMPRETRAIN = dict(type='SwinTransformer', arch=dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
                        window_size=7, pad_small_map=True, stage_cfgs=dict(block_cfgs=dict(ffn_ratio=2.)),
                        drop_path_rate=0.0)
# ResNet-18 with half the width (base and stem 32): levels 32/64/128/256; BatchNorm trained, nothing frozen
_RESNET = dict(type='ResNet', depth=18, stem_channels=32, base_channels=32, style='pytorch', frozen_stages=-1,
               norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)

SCOPES = ('mmpretrain', 'mmseg', 'mmdet')


def _everywhere(cfg: dict) -> Dict[str, dict]:
    return {scope: cfg for scope in SCOPES}


#: ``name -> {scope: backbone config}``; ``out_indices=(0, 1, 2, 3)`` is added everywhere.
BACKBONES: Dict[str, Dict[str, dict]] = {
    'nat': _everywhere(_NAT),
    'dinat': _everywhere(_DINAT),
    'qnavit': _everywhere(_QNAVIT),
    'swin': dict(mmpretrain=_SWIN_MMPRETRAIN, mmseg=_SWIN, mmdet=_SWIN),
    'resnet': _everywhere(_RESNET),
}
LABELS = dict(nat='NAT', dinat='DiNAT', qnavit='QnA-ViT', swin='Swin', resnet='ResNet-18 (narrow)')

#: Added to every config's ``optim_wrapper.paramwise_cfg.custom_keys`` with ``decay_mult=0``: the demo
#: configs list NAT's names (``rpb``, ``relative_position_bias_table``, ``norm``); these are QnA-ViT's
#: (``configs/_demo_/upernet_qnavit-*``) and ResNet's BatchNorms (``bn1``, ``layer1.0.bn2``, shortcut
#: ``layer2.0.downsample.1``), so that every backbone gets the same treatment: no decay on its norms,
#: position biases and learned queries. No other name of the five backbones or of the heads contains them.
EXTRA_NO_DECAY_KEYS = ('relative_position_bias_table', '.rpb', '.attn_scale', '.query', 'bn', 'downsample.1')


def backbone_cfg(name: str, scope: str, **overrides) -> dict:
    """The config of backbone ``name`` in ``scope``, all four levels out, ``overrides`` applied."""
    cfg = copy.deepcopy(BACKBONES[name][scope])
    cfg.update(out_indices=(0, 1, 2, 3), **overrides)
    return cfg


@contextlib.contextmanager
def quiet_init_logs():
    """Silence the INFO lines mmengine writes for every initialised parameter and the checkpoint loaders'
    prints (in-process builds; stdout is process-wide: hold the print lock of other threads)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def build_backbone(name: str, scope: str, **overrides):
    """Build backbone ``name`` in ``scope``'s registry (``localattn.analysis.models.build_backbone``)."""
    from mmengine.config import ConfigDict

    from localattn.analysis.models import build_backbone as build
    cfg = backbone_cfg(name, scope, **overrides)
    if cfg.get('init_cfg') is not None:  # mmdet's Swin reads init_cfg.checkpoint as an attribute
        cfg['init_cfg'] = ConfigDict(cfg['init_cfg'])
    return build(cfg.pop('type'), scope, **cfg)


def out_channels(model, size: int = 128) -> Tuple[int, ...]:
    """Channels of the backbone's outputs for a ``1x3xSxS`` input."""
    import torch
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, size, size))
    return tuple(int(o.shape[1]) for o in outs)


def check_widths(names: Iterable[str], scopes: Iterable[str]) -> None:
    """Assert that every backbone has the levels :data:`WIDTHS` in every scope (identical heads)."""
    for name in names:
        for scope in scopes:
            channels = out_channels(build_backbone(name, scope))
            assert channels == WIDTHS, f'{name} ({scope}) outputs {channels} channels, not {WIDTHS}'


def complexity(name: str, size: int = 128) -> Tuple[float, float]:
    """``(params in M, FLOPs in G)`` of backbone ``name`` (mmseg) for one ``1x3xSxS`` image."""
    from localattn.analysis import count_flops_params
    result = count_flops_params(build_backbone(name, 'mmseg'), input_shape=(3, size, size), max_depth=1)
    return result['params'] / 1e6, result['flops'] / 1e9


# --------------------------------------------------------------------------------- pretrained check
class PretrainMismatch(RuntimeError):
    """A classification checkpoint does not load completely into a dense-prediction backbone."""


def _backbone_state(checkpoint: str) -> dict:
    from localattn.checkpoint import read_checkpoint
    ckpt = read_checkpoint(checkpoint)
    state = ckpt.get('state_dict', ckpt)
    return {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}


def verify_pretrained(name: str, scope: str, checkpoint: str, size: int = 128) -> float:
    """Check that ``checkpoint`` (an mmpretrain classifier of backbone ``name``) initialises the
    ``scope`` backbone completely and identically; return the fraction of parameter values loaded.

    The dense backbone is built with the same ``init_cfg`` the fine-tuning uses and initialised through
    its own ``init_weights`` (mmseg's and mmdet's Swin have their own loaders); every parameter must then
    equal the checkpoint's, and its features must equal those of mmpretrain's backbone with the
    checkpoint's weights on a random image (a renamed or re-ordered layer would differ).

    Raises:
        PretrainMismatch: anything not loaded, or different features.
    """
    import torch
    state = _backbone_state(checkpoint)
    if not state:
        raise PretrainMismatch(f'{checkpoint} holds no backbone.* weights')
    init = dict(type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
    dense = build_backbone(name, scope, init_cfg=init)
    dense.init_weights()
    params = dict(dense.named_parameters())
    missing = [k for k, p in params.items()
               if k not in state or state[k].shape != p.shape or not torch.equal(state[k].to(p.dtype), p.detach())]
    total = sum(p.numel() for p in params.values())
    loaded = total - sum(params[k].numel() for k in missing)
    if missing:
        raise PretrainMismatch(
            f'{name}: {checkpoint} fills {loaded}/{total} parameter values of the {scope} backbone '
            f'({loaded / total:.1%}); not loaded: {", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}')
    source = build_backbone(name, 'mmpretrain')
    source.load_state_dict(state, strict=True)
    source.eval()  # (some backbones' train() returns None: no chaining)
    dense.eval()
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(source(image), dense(image)))
    if not diff <= 1e-4:
        raise PretrainMismatch(f'{name}: the {scope} backbone loaded from {checkpoint} computes other features '
                               f'than mmpretrain\'s (max difference {diff:.3g})')
    return loaded / total


# ------------------------------------------------------------------------------------------ tasks
@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    config: str  # the demo config the backbone is swapped into
    scope: str
    metrics: Tuple[Tuple[str, str, float], ...]  # (column, key in the metrics, factor to percent)


TASKS = {
    'cls': Task('cls', CLS_CONFIG, 'mmpretrain', (('top1', 'accuracy/top1', 1.0), )),
    'seg': Task('seg', demo.SEG_CONFIG, 'mmseg', (('mIoU', 'mIoU', 1.0), ('aAcc', 'aAcc', 1.0), ('mAcc', 'mAcc', 1.0))),
    'det': Task('det', demo.DET_CONFIG, 'mmdet',
                (('bbox_mAP', 'coco/bbox_mAP', 100.0), ('bbox_mAP_50', 'coco/bbox_mAP_50', 100.0),
                 ('segm_mAP', 'coco/segm_mAP', 100.0), ('segm_mAP_50', 'coco/segm_mAP_50', 100.0))),
}
RUN_COLUMNS = ('task', 'backbone', 'seed', 'status', 'mIoU', 'aAcc', 'mAcc', 'bbox_mAP', 'bbox_mAP_50', 'segm_mAP',
               'segm_mAP_50', 'top1', 'step_time_s', 'peak_rss_mb', 'peak_cuda_mb', 'train_wall_s', 'iters',
               'pretrain_iters', 'pretrained_from', 'pretrain_loaded', 'run_dir', 'log', 'error')


@dataclasses.dataclass(frozen=True)
class Metric:
    task: str
    column: str  # a RUN_COLUMNS entry, or 'peak_mem_mb' (CUDA memory if logged, else RSS)
    header: str
    higher_is_better: bool
    digits: int = 2


METRICS = (
    Metric('seg', 'mIoU', 'mIoU (%)', True),
    Metric('det', 'bbox_mAP', 'box mAP (%)', True),
    Metric('det', 'segm_mAP', 'mask mAP (%)', True),
    Metric('cls', 'top1', 'pretrain top-1 (%)', True),
    Metric('seg', 'step_time_s', 'seg s/iter', False, 3),
    Metric('det', 'step_time_s', 'det s/iter', False, 3),
    Metric('cls', 'step_time_s', 'pretrain s/iter', False, 3),
    Metric('seg', 'peak_mem_mb', 'seg peak mem (MB)', False, 0),
    Metric('det', 'peak_mem_mb', 'det peak mem (MB)', False, 0),
)

# ---------------------------------------------------------------------------------------- settings
#: Used where the demo's profile lacks a key (the demo may change; read it defensively).
FALLBACK_PROFILES = {
    'full': dict(num_train=256, num_val=48, size=128, seed=0, seg_iters=1000, seg_val_interval=250,
                 det_iters=600, det_val_interval=300, pretrain_iters=0),
    'quick': dict(num_train=8, num_val=4, size=128, seed=0, seg_iters=4, seg_val_interval=4,
                  det_iters=4, det_val_interval=4, pretrain_iters=0),
}


def settings_from(args: argparse.Namespace) -> dict:
    """The demo's profile (``full``, or ``quick`` with ``--quick``) with the command line's overrides."""
    name = 'quick' if args.quick else 'full'
    profile = dict(FALLBACK_PROFILES[name])
    profile.update(getattr(demo, 'PROFILES', {}).get(name, {}))
    for key in ('num_train', 'num_val', 'seg_iters', 'det_iters', 'pretrain_iters', 'seg_val_interval',
                'det_val_interval', 'pretrain_val_interval'):
        if getattr(args, key, None) is not None:
            profile[key] = getattr(args, key)
    profile['cls_iters'] = profile['pretrain_iters']
    profile['cls_val_interval'] = profile.get('pretrain_val_interval') or profile['pretrain_iters']
    profile['profile'] = name
    return profile


def log_interval(iters: int) -> int:
    """The demo's logger interval: every 10 iterations, every iteration for short runs."""
    return max(1, min(10, iters // 10 or 1))


def stretch_schedulers(schedulers: Sequence[dict], old_iters: int, new_iters: int) -> List[dict]:
    """``param_scheduler`` of a ``old_iters`` schedule scaled to ``new_iters`` (same shape: warm-up and
    decay keep their fractions of the run)."""
    if old_iters == new_iters:
        return [dict(s) for s in schedulers]
    scaled = []
    for sched in schedulers:
        sched = dict(sched)
        for key in ('begin', 'end', 'T_max'):
            if isinstance(sched.get(key), int):
                sched[key] = round(sched[key] * new_iters / old_iters)
        if 'end' in sched and sched['end'] <= sched.get('begin', 0):
            sched['end'] = sched.get('begin', 0) + 1
        if 'T_max' in sched:
            sched['T_max'] = max(1, sched['T_max'])
        scaled.append(sched)
    return scaled


def task_config(task: Task, backbone: str, iters: int, val_interval: int):
    """The demo config of ``task`` with backbone ``backbone`` and the comparison's schedule."""
    from mmengine.config import Config
    cfg = Config.fromfile(task.config)
    cfg.model.backbone = backbone_cfg(backbone, task.scope)
    keys = cfg.optim_wrapper.setdefault('paramwise_cfg', {}).setdefault('custom_keys', {})
    for key in EXTRA_NO_DECAY_KEYS:
        keys.setdefault(key, dict(decay_mult=0.))
    cfg.param_scheduler = stretch_schedulers(cfg.param_scheduler, cfg.train_cfg.max_iters, iters)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = val_interval
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = log_interval(iters)
    return cfg


# ------------------------------------------------------------------------------------ run results
def newest(pattern: str) -> Optional[str]:
    paths = sorted(glob.glob(pattern), key=osp.getmtime)
    return paths[-1] if paths else None


def read_scalars(work_dir: str) -> List[dict]:
    """The entries of the newest ``<work_dir>/<timestamp>/vis_data/scalars.json``."""
    path = newest(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    if path is None:
        return []
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def step_time(entries: Sequence[dict]) -> Optional[float]:
    """Mean seconds per training iteration from mmengine's logged ``time`` (training entries only,
    those with a ``loss``); the first tenth of the entries (at least one) is skipped as warm-up."""
    times = [e['time'] for e in entries if 'time' in e and 'loss' in e]
    if len(times) > 1:
        times = times[max(1, len(times) // 10):]
    return statistics.fmean(times) if times else None


def peak_cuda_mb(entries: Sequence[dict]) -> Optional[float]:
    values = [e['memory'] for e in entries if 'memory' in e]
    return float(max(values)) if values else None


PEAK_RSS_MARK = 'COMPARE_BACKBONES_PEAK_RSS_KB'
#: ``python -c WRAPPER tools/train.py ARGS``: runs train.py as __main__, then prints the peak RSS.
RSS_WRAPPER = ('import resource, runpy, sys\n'
               'sys.argv = sys.argv[1:]\n'
               "runpy.run_path(sys.argv[0], run_name='__main__')\n"
               f"print('{PEAK_RSS_MARK}', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")


def peak_rss_mb(output: str) -> Optional[float]:
    """The wrapper's peak RSS line (kilobytes on Linux, bytes on macOS) in MB."""
    match = re.search(rf'^{PEAK_RSS_MARK} (\d+)\s*$', output, re.M)
    if not match:
        return None
    value = int(match.group(1))
    return value / (1024 * 1024 if sys.platform == 'darwin' else 1024)


def read_test_metrics(test_dir: str) -> dict:
    """The metrics ``tools/test.py`` wrote (``<test_dir>/<timestamp>/<timestamp>.json``)."""
    path = newest(osp.join(test_dir, '*', '*.json'))
    if path is None:
        raise RunFailed(f'tools/test.py wrote no metrics file under {test_dir}')
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def scores(task: Task, metrics: dict) -> dict:
    out = {}
    for column, key, factor in task.metrics:
        if key not in metrics:
            raise RunFailed(f'{task.name}: metric {key!r} missing (got {sorted(metrics)})')
        out[column] = round(float(metrics[key]) * factor, 2)
    return out


# ------------------------------------------------------------------------------------------- runs
class RunFailed(RuntimeError):
    pass


@dataclasses.dataclass
class Run:
    task: Task
    backbone: str
    seed: int
    config: str  # the task-and-backbone config file
    run_dir: str
    log_dir: str
    iters: int
    pretrain: Optional['Run'] = None  # the classification run whose checkpoint initialises the backbone
    result_row: Optional[dict] = None  # set when the run is over (done, cached or failed)

    @property
    def key(self) -> str:
        return f'{self.task.name}_{self.backbone}_seed{self.seed}'

    @property
    def checkpoint(self) -> str:
        return osp.join(self.run_dir, f'iter_{self.iters}.pth')

    @property
    def result_file(self) -> str:
        return osp.join(self.run_dir, 'result.json')


def fingerprint(run: Run, data_params: dict) -> str:
    """What a run's result depends on: config, data, seed, pretraining (resumability)."""
    with open(run.config, encoding='utf-8') as f:
        text = f.read()
    parts = dict(config=text, data=data_params, seed=run.seed,
                 pretrain=fingerprint(run.pretrain, data_params) if run.pretrain else None)
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_result(run: Run, data_params: dict) -> Optional[dict]:
    if not osp.isfile(run.result_file):
        return None
    with open(run.result_file, encoding='utf-8') as f:
        saved = json.load(f)
    if saved.get('fingerprint') != fingerprint(run, data_params) or saved['row'].get('status') != 'ok':
        return None
    return saved['row']


def pretrained_options(checkpoint: str) -> List[str]:
    """``--cfg-options`` that initialise the backbone from a classifier's ``backbone.*`` weights."""
    return ['model.backbone.init_cfg.type=Pretrained', f'model.backbone.init_cfg.checkpoint={checkpoint}',
            'model.backbone.init_cfg.prefix=backbone.']


class Runner:
    """Runs the trainings and tests as subprocesses, ``parallel`` at a time, each with its own log."""

    def __init__(self, data_root: str, threads: Optional[int], parallel: int, force: bool, data_params: dict):
        self.data_root = data_root
        self.threads = max(1, threads // parallel) if threads else None
        self.parallel = parallel
        self.force = force
        self.data_params = data_params
        self.lock = threading.Lock()
        self.build_lock = threading.Lock()
        self.done = 0
        self.total = 0

    def command(self, cmd: List[str], log_file: str) -> str:
        """Run ``cmd`` in the repository root, output to ``log_file``; raise RunFailed on error."""
        env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg')
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        os.makedirs(osp.dirname(log_file), exist_ok=True)
        with open(log_file, 'w', encoding='utf-8') as log:
            log.write('$ ' + ' '.join('<peak-RSS wrapper>' if c == RSS_WRAPPER else c for c in cmd) + '\n')
            log.flush()
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        with open(log_file, encoding='utf-8', errors='replace') as f:
            output = f.read()
        if code != 0:
            tail = '\n'.join(output.splitlines()[-15:])
            raise RunFailed(f'exit code {code}; log {log_file}; last lines:\n{tail}')
        return output

    def run_all(self, runs: Sequence[Run]) -> List[dict]:
        self.total, self.done = len(runs), 0
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(self.run_one, runs))

    def run_one(self, run: Run) -> dict:
        pretrain_iters = run.pretrain.iters if run.pretrain else 0
        row = dict(task=run.task.name, backbone=run.backbone, seed=run.seed, iters=run.iters, run_dir=run.run_dir,
                   pretrain_iters=None if run.task.name == 'cls' else pretrain_iters,
                   log=osp.join(run.log_dir, f'{run.key}_train.log'))
        if run.pretrain and run.pretrain.result_row.get('status') != 'ok':
            return self._finish(run, dict(row, status='failed', error='its pretraining failed'), 'skipped')
        cached = None if self.force else cached_result(run, self.data_params)
        if cached is not None:
            return self._finish(run, cached, 'cached')
        if osp.isdir(run.run_dir):
            shutil.rmtree(run.run_dir)
        os.makedirs(run.run_dir)
        try:
            row.update(self.train(run), status='ok')
            if run.task.name != 'cls':
                row.update(self.test(run))
        except (RunFailed, PretrainMismatch) as exc:
            row.update(status='failed', error=str(exc))
        except Exception as exc:  # anything else: this run failed, the others go on
            row.update(status='failed', error=f'{type(exc).__name__}: {exc}\n{traceback.format_exc()}')
        if row['status'] == 'ok':
            with open(run.result_file, 'w', encoding='utf-8') as f:
                json.dump(dict(fingerprint=fingerprint(run, self.data_params), row=row), f, indent=1)
        return self._finish(run, row, 'done')

    def _finish(self, run: Run, row: dict, how: str) -> dict:
        run.result_row = row
        with self.lock:
            self.done += 1
            main = next((f'{c} {row[c]}' for c, _, _ in run.task.metrics if row.get(c) is not None), '')
            state = 'FAILED: ' + _first_line(row.get('error')) if row['status'] != 'ok' else main
            print(f'[{self.done}/{self.total}] {run.key}: {how}, {state}'
                  + (f' ({row["train_wall_s"]:.0f} s training)' if how == 'done' and row.get('train_wall_s') else ''),
                  flush=True)
        return row

    def train(self, run: Run) -> dict:
        scope = run.task.scope
        options = demo.data_root_options(scope, self.data_root) + [f'randomness.seed={run.seed}']
        result = {}
        if run.pretrain:
            ckpt = run.pretrain.checkpoint
            result['pretrained_from'] = ckpt
            with self.build_lock, self.lock, quiet_init_logs():  # registry scopes, logger, stdout: process-wide
                result['pretrain_loaded'] = verify_pretrained(run.backbone, scope, ckpt)
            options += pretrained_options(ckpt)
        cmd = [sys.executable, '-c', RSS_WRAPPER, osp.join(TOOLS, 'train.py'), run.config,
               '--work-dir', run.run_dir, '--cfg-options', *options]
        start = time.time()
        output = self.command(cmd, osp.join(run.log_dir, f'{run.key}_train.log'))
        result['train_wall_s'] = round(time.time() - start, 1)
        if not osp.isfile(run.checkpoint):
            raise RunFailed(f'training finished without writing {run.checkpoint}')
        entries = read_scalars(run.run_dir)
        result.update(step_time_s=_round(step_time(entries), 4), peak_rss_mb=_round(peak_rss_mb(output), 1),
                      peak_cuda_mb=_round(peak_cuda_mb(entries), 1))
        if run.task.name == 'cls':  # its final validation is the score (no separate test)
            metrics = next((e for e in reversed(entries) if 'accuracy/top1' in e), {})
            result.update(scores(run.task, metrics))
        return result

    def test(self, run: Run) -> dict:
        test_dir = osp.join(run.run_dir, 'test')
        cmd = [sys.executable, osp.join(TOOLS, 'test.py'), run.config, run.checkpoint, '--work-dir', test_dir,
               '--cfg-options', *demo.data_root_options(run.task.scope, self.data_root)]
        self.command(cmd, osp.join(run.log_dir, f'{run.key}_test.log'))
        return scores(run.task, read_test_metrics(test_dir))


def _first_line(text: Optional[str]) -> str:
    return (text or '').strip().split('\n')[0]


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)


def write_configs(settings: dict, backbones: Sequence[str], tasks: Sequence[str], config_dir: str
                  ) -> Dict[Tuple[str, str], str]:
    """``{(task, backbone): config file}``: each demo config with the backbone swapped, dumped."""
    os.makedirs(config_dir, exist_ok=True)
    configs = {}
    for task_name in tasks:
        iters, val = settings[f'{task_name}_iters'], settings[f'{task_name}_val_interval']
        for backbone in backbones:
            path = osp.join(config_dir, f'{task_name}_{backbone}.py')
            task_config(TASKS[task_name], backbone, iters, val).dump(path)
            configs[task_name, backbone] = path
    return configs


def plan_runs(settings: dict, backbones: Sequence[str], seeds: Sequence[int], tasks: Sequence[str],
              work_dir: str) -> Tuple[List[Run], List[Run]]:
    """``(pretraining runs, fine-tuning runs)``, seed-major (every backbone's first seed comes first)."""
    names = (['cls'] if settings['pretrain_iters'] > 0 else []) + list(tasks)
    configs = write_configs(settings, backbones, names, osp.join(work_dir, 'configs'))
    log_dir = osp.join(work_dir, 'logs')

    def make(task_name: str, backbone: str, seed: int, parent: Optional[Run]) -> Run:
        return Run(TASKS[task_name], backbone, seed, configs[task_name, backbone],
                   osp.join(work_dir, 'runs', task_name, backbone, f'seed{seed}'), log_dir,
                   settings[f'{task_name}_iters'], parent)

    pretrain, finetune = [], []
    for seed in seeds:
        for backbone in backbones:
            parent = make('cls', backbone, seed, None) if 'cls' in names else None
            pretrain += [parent] if parent else []
            finetune += [make(task, backbone, seed, parent) for task in tasks]
    return pretrain, finetune


# ------------------------------------------------------------------------------------ aggregation
@dataclasses.dataclass(frozen=True)
class Stat:
    mean: float
    std: Optional[float]  # sample std over seeds; None for one seed
    n: int


def metric_value(row: dict, column: str) -> Optional[float]:
    if column == 'peak_mem_mb':
        value = row.get('peak_cuda_mb')
        value = row.get('peak_rss_mb') if value in (None, '') else value
    else:
        value = row.get(column)
    return None if value in (None, '') else float(value)


def aggregate(rows: Sequence[dict], metrics: Sequence[Metric] = METRICS) -> Dict[str, Dict[str, Stat]]:
    """``{backbone: {metric header: Stat}}`` over the successful runs."""
    out: Dict[str, Dict[str, Stat]] = {}
    for row in rows:
        out.setdefault(row['backbone'], {})
    for backbone in out:
        for metric in metrics:
            values = [metric_value(r, metric.column) for r in rows
                      if r['backbone'] == backbone and r['task'] == metric.task and r.get('status') == 'ok']
            values = [v for v in values if v is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else None
                out[backbone][metric.header] = Stat(statistics.fmean(values), std, len(values))
    return out


def fmt_stat(stat: Optional[Stat], digits: int) -> str:
    if stat is None:
        return '-'
    text = f'{stat.mean:.{digits}f}'
    return text if stat.std is None else f'{text} ± {stat.std:.{digits}f}'


def winner_sentence(metric: Metric, stats: Dict[str, Dict[str, Stat]]) -> Optional[str]:
    """Which backbone is best on ``metric``, by how much, and whether the lead exceeds the std."""
    have = {b: s[metric.header] for b, s in stats.items() if metric.header in s}
    if not have:
        return None
    ranked = sorted(have, key=lambda b: have[b].mean, reverse=metric.higher_is_better)
    best, d = ranked[0], metric.digits
    better = 'higher' if metric.higher_is_better else 'lower'
    text = f'**{metric.header}** ({better} is better): {LABELS.get(best, best)} wins with {fmt_stat(have[best], d)}'
    if len(ranked) == 1:
        return text + '; no other backbone has results.'
    second = ranked[1]
    gap = abs(have[best].mean - have[second].mean)
    if round(gap, d) == 0:
        return (f'**{metric.header}**: {LABELS.get(best, best)} ({fmt_stat(have[best], d)}) and '
                f'{LABELS.get(second, second)} ({fmt_stat(have[second], d)}) tie for the best mean.')
    rel = f' ({gap / abs(have[second].mean):.0%})' if have[second].mean else ''
    text += (f', {gap:.{d}f}{rel} {better} than the runner-up {LABELS.get(second, second)} '
             f'({fmt_stat(have[second], d)})')
    stds = [s.std for s in (have[best], have[second]) if s.std is not None]
    if len(stds) < 2:
        return text + '; with a single seed there is no std to compare the difference with.'
    spread = max(stds)
    if gap > spread:
        return text + f'; the difference exceeds the larger std ({spread:.{d}f}): a lead that holds across seeds.'
    return text + f'; the difference is within the larger std ({spread:.{d}f}): not a clear win.'


#: Status of a run ``--report-only`` found no result for (listed apart from the failed runs).
NOT_RUN = 'not run'


def failures(rows: Sequence[dict]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for row in rows:
        if row.get('status') != 'ok':
            out.setdefault(row['backbone'], []).append(
                f'{row["task"]} seed {row["seed"]}' + (' (not run)' if row.get('status') == NOT_RUN else ''))
    return out


def summary_table(stats: Dict[str, Dict[str, Stat]], complexity_of: Dict[str, Tuple[float, float]],
                  rows: Sequence[dict], metrics: Sequence[Metric]) -> str:
    """The markdown table, one row per backbone (``demo.render_table``)."""
    failed = failures(rows)
    header = ['backbone', 'params (M)', 'FLOPs (G)'] + [m.header for m in metrics] + ['seeds', 'failed runs']
    table = [header]
    for backbone in stats:
        params, flops = complexity_of.get(backbone, (math.nan, math.nan))
        seeds = {r['seed'] for r in rows if r['backbone'] == backbone and r.get('status') == 'ok'}
        table.append([LABELS.get(backbone, backbone), f'{params:.2f}', f'{flops:.3f}']
                     + [fmt_stat(stats[backbone].get(m.header), m.digits) for m in metrics]
                     + [str(len(seeds)), ', '.join(failed.get(backbone, [])) or '-'])
    return demo.render_table(table)


def active_metrics(rows: Sequence[dict]) -> List[Metric]:
    tasks = {r['task'] for r in rows}
    return [m for m in METRICS if m.task in tasks]


def render_markdown(rows: Sequence[dict], complexity_of: Dict[str, Tuple[float, float]], settings: dict,
                    extra_lines: Sequence[str] = ()) -> str:
    metrics = active_metrics(rows)
    stats = aggregate(rows, metrics)
    lines = ['# Backbone comparison on the synthetic shapes data', '']
    if settings.get('profile') == 'quick':
        lines += ['**--quick: a few iterations on a few images. These scores are meaningless (smoke test).**', '']
    lines += list(extra_lines) + ['', summary_table(stats, complexity_of, rows, metrics), '']
    lines += [f'- {s}' for s in (winner_sentence(m, stats) for m in metrics) if s]
    names = add_class_ious(rows)
    if names:
        lines += ['', 'Per-class IoU of the segmenters (percent, single scale, mean ± std over seeds):', '',
                  class_table(rows, names)]
    failed = [r for r in rows if r.get('status') not in ('ok', NOT_RUN)]
    if failed:
        lines += ['', f'## FAILED runs ({len(failed)})', '']
        lines += [f'- {r["task"]} {r["backbone"]} seed {r["seed"]}: {_first_line(r.get("error"))} '
                  f'(log: `{r.get("log")}`)' for r in failed]
    missing = [r for r in rows if r.get('status') == NOT_RUN]
    if missing:
        lines += ['', f'## Not run ({len(missing)})', '']
        lines += [f'- {r["task"]} {r["backbone"]} seed {r["seed"]}: {r.get("error")}' for r in missing]
    lines += ['', 'Params / FLOPs: the backbone alone, multiply-adds of one 1x3x128x128 forward (attention counted '
              'analytically). Scores: percent on the synthetic val split, mean ± sample std over seeds. s/iter: '
              'mean training step time after warm-up (comparable between runs of the same --threads / --parallel '
              'on an equally loaded machine). Peak mem: CUDA memory where logged, else the peak RSS of the '
              'training process.', '']
    return '\n'.join(lines)


def add_class_ious(rows: Sequence[dict]) -> List[str]:
    """Add ``IoU_<class>`` (percent, single scale) to every successful seg row, parsed from the
    per-class table of its ``tools/test.py`` log; returns the class names found."""
    names: List[str] = []
    for row in rows:
        if row.get('task') != 'seg' or row.get('status') != 'ok' or not row.get('log'):
            continue
        test_log = row['log'].replace('_train.log', '_test.log')
        if not osp.isfile(test_log):
            continue
        with open(test_log, encoding='utf-8') as f:
            table = demo.parse_class_table(f.read())
        for name, values in table.items():
            row[f'IoU_{name}'] = values.get('IoU')
            if name not in names:
                names.append(name)
    return names


def class_table(rows: Sequence[dict], names: Sequence[str]) -> str:
    """Per-class IoU of the segmenters, mean ± std over seeds, one row per backbone."""
    metrics = [Metric('seg', f'IoU_{n}', n, True, 1) for n in names]
    stats = aggregate([r for r in rows if r.get('task') == 'seg'], metrics)
    table = [['backbone'] + list(names)]
    for backbone, values in stats.items():
        table.append([LABELS.get(backbone, backbone)] + [fmt_stat(values.get(m.header), 1) for m in metrics])
    return demo.render_table(table)


def collect_results(work_dir: str, backbones: Sequence[str], seeds: Sequence[int],
                    tasks: Sequence[str]) -> List[dict]:
    """The rows of runs already made under ``work_dir`` (``--report-only``); a run without a result is
    listed as failed (not run)."""
    rows = []
    for task in tasks:
        for backbone in backbones:
            for seed in seeds:
                path = osp.join(work_dir, 'runs', task, backbone, f'seed{seed}', 'result.json')
                if osp.isfile(path):
                    with open(path, encoding='utf-8') as f:
                        rows.append(json.load(f)['row'])
                else:
                    rows.append(dict(task=task, backbone=backbone, seed=seed, status=NOT_RUN,
                                     error=f'no result: {path} does not exist'))
    return rows


def write_csv(rows: Sequence[dict], path: str) -> None:
    extra = sorted({k for row in rows for k in row if k.startswith('IoU_')})
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(RUN_COLUMNS) + extra, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in list(RUN_COLUMNS) + extra})


def plot(rows: Sequence[dict], path: str, title: str = '') -> Optional[str]:
    """Bars (mean, std error bars) of mIoU and mask mAP, and of the training step times, per backbone."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    metrics = active_metrics(rows)
    groups = [[m] for m in metrics if m.column in ('mIoU', 'segm_mAP')]
    groups += [[m for m in metrics if m.column == 'step_time_s' and m.task != 'cls']]
    groups = [g for g in groups if g]
    stats = aggregate(rows, [m for g in groups for m in g])
    backbones = list(stats)
    if not backbones or not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups):
        width = 0.8 / len(group)
        for k, metric in enumerate(group):
            cells = [stats[b].get(metric.header) for b in backbones]
            ax.bar([i + (k - (len(group) - 1) / 2) * width for i in range(len(backbones))],
                   [c.mean if c else 0 for c in cells], width, yerr=[(c.std or 0) if c else 0 for c in cells],
                   capsize=3, label=metric.header)
        ax.set_xticks(range(len(backbones)))
        ax.set_xticklabels([LABELS.get(b, b) for b in backbones], rotation=30, ha='right')
        is_time = group[0].column == 'step_time_s'
        ax.set_title('training step time (s/iter)' if is_time else group[0].header)
        if is_time:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Compare backbones (same configs, schedule, data; N seeds) on the '
                                     "demo's synthetic data: mIoU, box/mask mAP, step time, memory.")
    parser.add_argument('--backbones', nargs='+', choices=list(BACKBONES), default=list(BACKBONES), metavar='NAME',
                        help=f'subset of {", ".join(BACKBONES)} (default: all)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2], metavar='K',
                        help="training seeds, randomness.seed (default 0 1 2; the data is always generated with "
                        "the demo profile's seed)")
    parser.add_argument('--tasks', nargs='+', choices=['seg', 'det'], default=['seg', 'det'],
                        help='seg (UPerNet, mIoU), det (Mask R-CNN, box/mask mAP); default both')
    parser.add_argument('--pretrain-iters', type=int, metavar='N',
                        help="classification pretraining iterations per backbone and seed (default: the demo "
                        "profile's pretrain_iters, else 0 = from scratch)")
    parser.add_argument('--pretrain-val-interval', type=int, metavar='N', help='default: once, at the end')
    for name in ('seg-iters', 'det-iters', 'seg-val-interval', 'det-val-interval', 'num-train', 'num-val'):
        parser.add_argument(f'--{name}', type=int, metavar='N', help="default: the demo's profile")
    parser.add_argument('--threads', type=int, metavar='N',
                        help='OMP threads for all the runs together (split over --parallel; '
                        'default: $OMP_NUM_THREADS if set, else the idle CPU cores)')
    parser.add_argument('--parallel', type=int, default=1, metavar='K', help='trainings at once (default 1)')
    parser.add_argument('--data-root', metavar='DIR',
                        help='synthetic data (generated if needed; default: <work-dir>/data)')
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'compare'), metavar='DIR',
                        help='outputs: compare.csv/md/png, configs, runs, logs (default: work_dirs/compare)')
    parser.add_argument('--quick', action='store_true',
                        help='a few iterations on a few images (smoke test; scores are meaningless)')
    parser.add_argument('--force', action='store_true', help='rerun runs whose results exist')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: write the reports from the results already under --work-dir '
                        '(e.g. after running --tasks seg and --tasks det separately)')
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error('--parallel must be >= 1')
    return args


def generate_data(data_root: str, settings: dict) -> dict:
    """The demo's synthetic data (all three tasks: one dataset whichever stages run); its parameters."""
    meta = demo.load_generator().generate(data_root, num_train=settings['num_train'], num_val=settings['num_val'],
                                          size=settings['size'], seed=settings['seed'], tasks=('det', 'seg', 'cls'),
                                          verbose=True)
    return meta.get('params', {})


def _rel(path: str) -> str:
    return osp.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _iterations(n: int) -> str:
    return f'{n} iteration' + ('' if n == 1 else 's')


def settings_lines(settings: dict, args: argparse.Namespace, threads: Optional[int], data_root: str) -> List[str]:
    pre = (f'pretrained for {_iterations(settings["pretrain_iters"])} on the classification split '
           f'(`{_rel(CLS_CONFIG)}`, backbone swapped)' if settings['pretrain_iters'] else 'from scratch')
    tasks = ', '.join(f'{t} {_iterations(settings[f"{t}_iters"])} (`{_rel(TASKS[t].config)}`)' for t in args.tasks)
    return [f'Settings (demo profile `{settings["profile"]}` + command line): {settings["num_train"]} train / '
            f'{settings["num_val"]} val images of {settings["size"]} px (`{data_root}`); {tasks}; backbones {pre}; '
            f'seeds {", ".join(map(str, args.seeds))}; {threads} thread(s) over {args.parallel} parallel run(s).']


def _import_localattn() -> None:
    """Register the localattn backbones in every scope (from a source checkout if not installed)."""
    try:
        import localattn  # noqa: F401
    except ImportError:
        sys.path.insert(0, osp.join(ROOT, 'projects'))
        import localattn  # noqa: F401


def demo_drift() -> List[str]:
    """Warnings where the demo's own backbones (being edited elsewhere) no longer match :data:`BACKBONES`."""
    from mmengine.config import Config
    out = []
    for config, name in ((demo.SEG_CONFIG, 'nat'), (demo.DET_CONFIG, 'nat')):
        theirs = Config.fromfile(config).model.backbone.to_dict()
        ours = backbone_cfg(name, TASKS['seg'].scope)
        if any(theirs.get(k) != ours.get(k) for k in ('type', 'arch')):
            out.append(f'WARNING: the backbone of {_rel(config)} ({theirs}) is no longer the `{name}` entry of '
                       'this tool: the comparison does not match the demo.')
    return out


def measure_backbones(names: Sequence[str], scopes: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """Check the output widths in every scope used; ``{name: (params M, FLOPs G)}``."""
    with quiet_init_logs():
        check_widths(names, scopes)
        return {name: complexity(name) for name in names}


def write_reports(rows: List[dict], complexity_of: dict, settings: dict, notes: List[str], work_dir: str,
                  seeds: Sequence[int]) -> str:
    """``compare.csv``, ``compare.md``, ``compare.png`` under ``work_dir``; returns the markdown."""
    rows.sort(key=lambda r: (list(BACKBONES).index(r['backbone']), ['cls', 'seg', 'det'].index(r['task']), r['seed']))
    add_class_ious(rows)
    write_csv(rows, osp.join(work_dir, 'compare.csv'))
    markdown = render_markdown(rows, complexity_of, settings, notes)
    with open(osp.join(work_dir, 'compare.md'), 'w', encoding='utf-8') as f:
        f.write(markdown)
    quick = ' (--quick: meaningless scores)' if settings['profile'] == 'quick' else ''
    plot(rows, osp.join(work_dir, 'compare.png'), f'mean ± std over seeds {", ".join(map(str, seeds))}{quick}')
    return markdown


def report_only(args: argparse.Namespace, settings: dict, work_dir: str) -> int:
    """``--report-only``: the reports of the runs already made (their own settings are in the rows)."""
    rows = collect_results(work_dir, args.backbones, args.seeds, args.tasks)
    scopes = [TASKS[t].scope for t in args.tasks]
    complexity_of = measure_backbones(args.backbones, scopes)
    done = [r for r in rows if r.get('status') == 'ok']
    iters = {t: sorted({r.get('iters') for r in done if r['task'] == t}) for t in args.tasks}
    notes = [f'Report of the runs under `{_rel(work_dir)}` (`--report-only`): '
             + '; '.join(f'{t} {", ".join(map(str, n))} iterations (configs: `{_rel(work_dir)}/configs/{t}_*.py`)'
                         for t, n in iters.items() if n) + '.']
    print(write_reports(rows, complexity_of, settings, notes, work_dir, args.seeds))
    failed = [r for r in rows if r.get('status') != 'ok']
    if failed:
        print(f'\nCOMPARISON INCOMPLETE: {len(failed)} run(s) without a result', file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    work_dir = osp.abspath(args.work_dir)
    data_root = osp.abspath(args.data_root or osp.join(work_dir, 'data'))
    env_threads = os.environ.get('OMP_NUM_THREADS')
    threads = args.threads or (int(env_threads) if env_threads else demo.auto_threads())
    os.makedirs(work_dir, exist_ok=True)
    _import_localattn()
    if args.report_only:
        return report_only(args, settings, work_dir)
    pretraining = settings['pretrain_iters'] > 0
    stages = (['cls pretrain'] if pretraining else []) + args.tasks
    print(f'compare_backbones ({settings["profile"]}): {", ".join(args.backbones)} x seeds {args.seeds} x '
          f'{" + ".join(stages)} -> {work_dir}', flush=True)
    notes = demo_drift()
    for note in notes:
        print(note, file=sys.stderr)
    scopes = [TASKS[t].scope for t in args.tasks] + (['mmpretrain'] if pretraining else [])
    complexity_of = measure_backbones(args.backbones, scopes)
    data_params = generate_data(data_root, settings)

    pretrain, finetune = plan_runs(settings, args.backbones, args.seeds, args.tasks, work_dir)
    runner = Runner(data_root, threads, args.parallel, args.force, data_params)
    rows = (runner.run_all(pretrain) if pretrain else []) + runner.run_all(finetune)

    notes += settings_lines(settings, args, threads, data_root)
    print('\n' + write_reports(rows, complexity_of, settings, notes, work_dir, args.seeds))
    print(f'written: {", ".join(osp.join(work_dir, f"compare.{ext}") for ext in ("csv", "md", "png"))}')
    if settings['profile'] == 'quick':
        print('(--quick: a smoke run of a few iterations; the scores are not meaningful)')
    failed = [r for r in rows if r.get('status') != 'ok']
    if failed:
        print(f'\nCOMPARISON INCOMPLETE: {len(failed)} run(s) FAILED: '
              + ', '.join(f'{r["task"]}/{r["backbone"]}/seed{r["seed"]}' for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
