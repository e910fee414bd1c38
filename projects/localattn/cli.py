"""``tools/train.py`` and ``tools/test.py``: one pair of entry points for mmdet, mmseg and mmpretrain.

The flags are the ones users know from those libraries. Behaviour that differs between them
(visualisation hooks, ``--out``, ``--tta``) dispatches on the config's ``default_scope``.
"""
import argparse
import os
import os.path as osp
import re
import time
import warnings
import zipfile
from typing import List, Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. "train_dataloader.batch_size=2 '
        'model.backbone.drop_path_rate=0.1"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_train.sh uses pytorch)')
    # torchrun >= 2.0 passes --local-rank; older launchers pass --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Train a localattn model (mmdet/mmseg/mmpretrain config)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CHECKPOINT; without a value, from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision training (needs CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual batch size (needs auto_scale_lr in the config)')
    _add_common_args(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Test (evaluate) a localattn model checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (local path)')
    parser.add_argument('--out', help='dump predictions: a .pkl file for mmdet/mmpretrain, '
                        'a directory of prediction maps for mmseg')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save pictures of the predictions to this directory')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per shown image')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s tta_model and tta_pipeline)')
    _add_common_args(parser)
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """Read the config, apply ``--cfg-options``, ``--launcher`` and the work dir."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'config {args.config}: default_scope must be one of {SCOPES}, got {scope!r}')
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    _adapt_to_device(cfg)
    return cfg


def _adapt_to_device(cfg: Config) -> None:
    """Let GPU configs run on a CPU-only machine: plain optimiser wrapper and the gloo backend."""
    if torch.cuda.is_available():
        return
    wrapper = cfg.get('optim_wrapper')
    if wrapper is not None and wrapper.get('type') == 'AmpOptimWrapper':
        warnings.warn('No CUDA device: replacing AmpOptimWrapper with OptimWrapper (fp32 training).',
                      stacklevel=2)
        wrapper.type = 'OptimWrapper'
        wrapper.pop('loss_scale', None)
        wrapper.pop('dtype', None)
    if cfg.launcher != 'none':
        env_cfg = cfg.setdefault('env_cfg', {})
        dist_cfg = env_cfg.setdefault('dist_cfg', {})
        if dist_cfg.get('backend', 'nccl') == 'nccl':
            dist_cfg['backend'] = 'gloo'
        # mmengine wraps DDP with device_ids=[LOCAL_RANK], which DDP rejects for CPU modules.
        wrapper_cfg = cfg.get('model_wrapper_cfg') or dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        wrapper_cfg['device_ids'] = None
        cfg.model_wrapper_cfg = wrapper_cfg
        _init_cpu_process_group(dist_cfg['backend'])


def _init_cpu_process_group(backend: str) -> None:
    """Initialise torch.distributed from torchrun's variables without touching CUDA.

    mmengine's own initialisation calls ``torch.cuda.set_device``, which fails without a GPU; the
    Runner skips it when the process group already exists.
    """
    import torch.distributed as dist
    if not dist.is_initialized() and 'RANK' in os.environ:
        dist.init_process_group(backend=backend)


#: Checkpoints the CheckpointHook writes (``filename_tmpl`` defaults), and the temporary files of an
#: atomic write (:func:`localattn.checkpoint.atomic_write`) that a killed process left behind.
_CHECKPOINT_RE = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')
_PARTIAL_RE = re.compile(r'^(?:iter|epoch)_\d+\.pth\.tmp-(\d+)$')


def _complete(path: str) -> bool:
    """Cheap check that a checkpoint file is whole: a readable zip directory (torch >= 1.6 format;
    a truncated file has none) or a legacy pickle header."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
        if head.startswith(b'PK'):
            with zipfile.ZipFile(path) as archive:
                return bool(archive.namelist())
        return head[:1] == b'\x80'
    except (OSError, zipfile.BadZipFile):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) continues from, or None to start afresh.

    mmengine reads ``<work_dir>/last_checkpoint``. This also copes with a run that was killed at a bad
    moment: when that file is missing, empty (killed while rewriting it) or names a file that is gone
    or incomplete, the newest complete ``iter_*.pth`` / ``epoch_*.pth`` in the work dir is used, with a
    warning. Temporary files of checkpoint writes that a killed process left (``iter_N.pth.tmp-PID``)
    are removed.

    Raises:
        FileNotFoundError: ``last_checkpoint`` names a checkpoint but no complete one is left.
    """
    from mmengine.logging import print_log
    if not osp.isdir(work_dir):
        return None
    for name in os.listdir(work_dir) if int(os.environ.get('RANK', '0')) == 0 else ():
        match = _PARTIAL_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.remove(osp.join(work_dir, name))
            except OSError:
                continue
            print_log(f'Removed {name}: a checkpoint write that was interrupted (the process was '
                      'killed while saving).', logger='current', level=30)
    recorded = None
    record = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(record):
        with open(record) as f:
            recorded = f.read().strip()
        if recorded and osp.isfile(recorded) and _complete(recorded):
            return recorded
    candidates = sorted(((int(m.group(1)), osp.join(work_dir, name)) for name in os.listdir(work_dir)
                         for m in [_CHECKPOINT_RE.match(name)] if m), reverse=True)
    for _, path in candidates:
        if _complete(path):
            if recorded is not None or osp.isfile(record):
                print_log(f'--resume: {record} names {recorded or "nothing (empty file)"}, which is '
                          f'missing or incomplete; resuming from {path}, the newest complete '
                          'checkpoint.', logger='current', level=30)
            return path
    if recorded:
        raise FileNotFoundError(
            f'--resume: {record} names {recorded}, which is missing or incomplete, and {work_dir} '
            'holds no other complete iter_*.pth / epoch_*.pth checkpoint. Pass one explicitly '
            '(`--resume CHECKPOINT`) or train without --resume.')
    return None


def _strip_module(key: str) -> str:
    while key.startswith('module.'):  # DDP wrappers, test-time-augmentation models
        key = key[len('module.'):]
    return key


def check_checkpoint_coverage(model: torch.nn.Module, checkpoint: dict, source: str = '<checkpoint>',
                              allow_partial: bool = False):
    """Refuse a ``load_from`` / ``tools/test.py`` checkpoint that fills little of the model.

    Compares, by name and shape as mmengine loads, the checkpoint with the model's backbone
    (``backbone.*``; the whole model when it has none). Less than
    :data:`~localattn.checkpoint.MIN_LOADED_FRACTION` of its parameter values matched: raises
    :class:`~localattn.checkpoint.PartialLoadError` with the report and the fix, unless
    ``allow_partial``; anything short of a full match is logged at WARNING with the fraction.

    Returns:
        the :class:`~localattn.checkpoint.LoadReport` (keys with the model's names).
    """
    from mmengine.logging import print_log

    from .checkpoint import MIN_LOADED_FRACTION, PartialLoadError, _percent, compare_state_dicts
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    state = {_strip_module(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = {_strip_module(k): v for k, v in model.state_dict().items()}
    params = {_strip_module(k): p.numel() for k, p in model.named_parameters()}
    part = 'backbone.' if any(k.startswith('backbone.') for k in own) else ''

    def pick(d: dict) -> dict:
        return {k: v for k, v in d.items() if k.startswith(part)}

    report = compare_state_dicts(pick(own), pick(state), pick(params), source=source)
    what = 'backbone' if part else 'model'
    if report.fraction < MIN_LOADED_FRACTION and not allow_partial:
        hint = ''
        if part and not pick(state) and any(f'{part}{k}' in own for k in state):
            hint = (' Its keys have no `backbone.` prefix: it looks like a backbone-only checkpoint, which '
                    "belongs in model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...).")
        raise PartialLoadError(
            f'{source} matches only {_percent(report.fraction)} of the {what}\'s parameter values of '
            f'{type(model).__name__} (less than {MIN_LOADED_FRACTION:.0%}): the {what} would run from its '
            'initial weights. It is probably a checkpoint of another model, architecture or size.'
            f'{hint} If a partial load is what you want, set `load_from_allow_partial = True` in the '
            'config (`--cfg-options load_from_allow_partial=True`).\n' + report.format())
    if not report.clean:
        print_log(f'{source}: the {what} part matches partially:\n{report.format()}', logger='current',
                  level=30)
    return report


def _coverage_hook(cfg: Config):
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper

    class CheckpointCoverageHook(Hook):
        """Runs :func:`check_checkpoint_coverage` on what the Runner loads (``load_from``,
        ``tools/test.py CHECKPOINT``, ``--resume``)."""
        priority = 'VERY_HIGH'

        def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            check_checkpoint_coverage(model, checkpoint, source=str(cfg.get('load_from') or 'the checkpoint'),
                                      allow_partial=bool(cfg.get('load_from_allow_partial', False)))

    return CheckpointCoverageHook()


def _build_runner(cfg: Config) -> Runner:
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.register_hook(_coverage_hook(cfg))
    return runner


def train(argv: Optional[Sequence[str]] = None) -> Runner:
    """Run ``tools/train.py`` with ``argv``; returns the finished Runner."""
    args = train_parser().parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        if not torch.cuda.is_available():
            raise ValueError('--amp needs a CUDA device; run without --amp on CPU.')
        if cfg.optim_wrapper.get('type') != 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=...)` in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = find_resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    runner = _build_runner(cfg)
    runner.train()
    return runner


def _enable_visualization(cfg: Config, args: argparse.Namespace) -> None:
    scope = cfg.default_scope
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show/--show-dir need a `visualization` entry in default_hooks')
    show_dir = osp.abspath(args.show_dir) if args.show_dir else None
    if scope == 'mmpretrain':
        hook.update(enable=True, show=args.show, wait_time=args.wait_time)
        if show_dir:
            hook.out_dir = show_dir
        return
    hook.update(draw=True, show=args.show, wait_time=args.wait_time)
    if show_dir and scope == 'mmdet':
        hook.test_out_dir = show_dir
    elif show_dir:  # mmseg saves through the visualizer's save_dir
        cfg.visualizer.save_dir = show_dir


def _enable_tta(cfg: Config) -> None:
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ValueError(f'--tta needs {" and ".join(missing)} in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _add_dump(runner: Runner, cfg: Config, out: str) -> None:
    if cfg.default_scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults as Dump
    else:
        from mmengine.evaluator import DumpResults as Dump
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl or .pickle file for {cfg.default_scope} configs, got {out!r}')
    runner.test_evaluator.metrics.append(Dump(out_file_path=out))


def test(argv: Optional[Sequence[str]] = None) -> dict:
    """Run ``tools/test.py`` with ``argv``; returns the metrics."""
    args = test_parser().parse_args(argv)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _enable_visualization(cfg, args)
    if args.tta:
        _enable_tta(cfg)
    if args.out and cfg.default_scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    runner = _build_runner(cfg)
    if args.out and cfg.default_scope != 'mmseg':
        _add_dump(runner, cfg, args.out)
    start = time.time()
    metrics = runner.test()
    if args.show_dir:
        _report_pictures(osp.abspath(args.show_dir), start)
    return metrics


def _report_pictures(show_dir: str, since: float) -> List[str]:
    """Print where ``--show-dir`` pictures went (each library nests them differently) and return them."""
    pictures = sorted(
        osp.join(root, name) for root, _, names in os.walk(show_dir) for name in names
        if name.lower().endswith(('.png', '.jpg', '.jpeg')) and osp.getmtime(osp.join(root, name)) >= since - 1)
    if pictures:
        where = osp.commonpath([osp.dirname(p) for p in pictures])
        print(f'--show-dir: saved {len(pictures)} pictures of the predictions in {where}', flush=True)
    else:
        print(f'--show-dir: no pictures were written under {show_dir} (does the config\'s visualization '
              'hook draw for this dataset?)', flush=True)
    return pictures

