#!/usr/bin/env python
"""End-to-end CPU demo of localattn: synthetic data -> train -> evaluate -> pictures -> summary.

    python tools/demo.py [--work-dir work_dirs/demo] [--quick] [--data-root DIR] [--verbose]

Steps (each through the user-facing tools, as subprocesses whose progress is streamed here):

1. ``tools/dataset_converters/generate_synthetic.py``: the synthetic shapes dataset (COCO instances,
   ADE-like label maps) under ``--data-root`` (default ``<repo>/data/synthetic``).
2. ``tools/train.py configs/_demo_/upernet_nat-demo_synthetic-128x128.py``: UPerNet + FCN aux on a
   tiny NAT (mmseg), validated during training.
3. ``tools/test.py`` on its checkpoint: single-scale mIoU with prediction pictures (``--show-dir``),
   then ``--tta``: multi-scale (0.75-1.5) + flip mIoU.
4. ``tools/train.py configs/_demo_/mask-rcnn_nat-demo_fpn_synthetic.py``: Mask R-CNN on a tiny NAT
   (mmdet) whose backbone starts from the segmenter's (``model.backbone.init_cfg=dict(
   type='Pretrained', checkpoint=<seg checkpoint>, prefix='backbone.')``: the weights transfer as
   an ImageNet backbone would; measured: mask mAP 22.9 against 17.0 from scratch, 600 iterations
   each), then ``tools/test.py --show-dir``: box, mask and per-class mask AP, with pictures.
5. ``tools/analysis_tools/plot_curves.py``: loss / metric curves of both runs.
6. A summary table with per-class IoU / mask AP, also written to ``<work-dir>/summary.json`` and
   ``summary.md``.

The full run takes about 12 minutes on two CPU cores; ``--quick`` trains a few iterations on a handful
of images (a smoke test: the scores are then meaningless). Full outputs are logged to
``<work-dir>/logs/<step>.log``; the terminal shows the progress lines.
"""
import argparse
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
SEG_CONFIG = osp.join(ROOT, 'configs', '_demo_', 'upernet_nat-demo_synthetic-128x128.py')
DET_CONFIG = osp.join(ROOT, 'configs', '_demo_', 'mask-rcnn_nat-demo_fpn_synthetic.py')

#: Settings of the full demo and of ``--quick``. The full profile trains the configs' own schedules
#: (``max_iters`` 1400 / 640) and fills the 12-minute budget of the demo on 2 CPU cores.
PROFILES = {
    'full': dict(num_train=256, num_val=48, size=128, seed=0,
                 seg_iters=1400, seg_val_interval=700, det_iters=640, det_val_interval=320,
                 det_init='seg', num_pictures=8),
    'quick': dict(num_train=8, num_val=4, size=128, seed=0,
                  seg_iters=4, seg_val_interval=4, det_iters=4, det_val_interval=4,
                  det_init='seg', num_pictures=4),
}

#: Lines of the subprocess output echoed to the terminal (everything goes to the log file).
PROGRESS = re.compile(r'Iter\((train|val|test)\)|Epoch\(|Saving checkpoint|_copypaste|resumed|'
                      r'Traceback|Error|^\s*[|+][-=|+ A-Za-z0-9.]*$|^\s*\w*Error')


def data_root_options(scope: str, data_root: str) -> List[str]:
    """``--cfg-options`` that point a demo config of ``scope`` at ``data_root`` (the generator's
    output directory holding ``det/``, ``seg/`` and ``cls/``).

    The configs compute their dataset roots when the file is read, so each dataloader (and the
    COCO evaluators' annotation files) is overridden explicitly.
    """
    data_root = osp.abspath(data_root)
    if scope == 'mmseg':
        root = osp.join(data_root, 'seg')
        return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    if scope == 'mmdet':
        root = osp.join(data_root, 'det') + '/'
        ann = osp.join(data_root, 'det', 'annotations', 'instances_val.json')
        return ([f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
                + [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}'])
    if scope == 'mmpretrain':
        root = osp.join(data_root, 'cls')
        return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    raise ValueError(f'unknown scope {scope!r}')


def load_generator():
    path = osp.join(TOOLS, 'dataset_converters', 'generate_synthetic.py')
    spec = importlib.util.spec_from_file_location('localattn_generate_synthetic', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StepFailed(RuntimeError):
    pass


class Demo:

    def __init__(self, work_dir: str, data_root: str, profile: dict, verbose: bool = False,
                 threads: Optional[int] = None):
        self.threads = threads
        self.work_dir = osp.abspath(work_dir)
        self.data_root = osp.abspath(data_root)
        self.profile = profile
        self.verbose = verbose
        self.log_dir = osp.join(self.work_dir, 'logs')
        self.timings: Dict[str, float] = {}
        os.makedirs(self.log_dir, exist_ok=True)

    # ------------------------------------------------------------------ helpers
    def banner(self, text: str) -> None:
        print(f'\n=== {text}', flush=True)

    def run(self, name: str, cmd: Sequence[str]) -> str:
        """Run ``cmd``, echo its progress lines, log everything; raise StepFailed on error."""
        log_file = osp.join(self.log_dir, f'{name}.log')
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env.setdefault('MPLBACKEND', 'Agg')
        print('$ ' + ' '.join(osp.relpath(c, os.getcwd()) if osp.isabs(c) and c.startswith(ROOT)
                              else c for c in cmd[1:]), flush=True)
        start = time.time()
        lines = []
        with open(log_file, 'w', encoding='utf-8') as log:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, env=env, cwd=ROOT)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if self.verbose or PROGRESS.search(line):
                    sys.stdout.write('  ' + _shorten(line))
                    sys.stdout.flush()
            code = proc.wait()
        self.timings[name] = round(time.time() - start, 1)
        if code != 0:
            tail = ''.join(lines[-40:])
            raise StepFailed(f'step {name!r} failed (exit code {code}); last lines:\n{tail}\n'
                             f'full log: {log_file}')
        print(f'  ({name}: {self.timings[name]:.0f}s)', flush=True)
        return ''.join(lines)

    def python(self, name: str, script: str, *args: str) -> str:
        return self.run(name, [sys.executable, osp.join(TOOLS, script), *args])

    # ------------------------------------------------------------------ steps
    def generate_data(self) -> dict:
        self.banner(f'1/6 synthetic data -> {self.data_root}')
        p = self.profile
        start = time.time()
        meta = load_generator().generate(self.data_root, num_train=p['num_train'],
                                         num_val=p['num_val'], size=p['size'], seed=p['seed'],
                                         tasks=('det', 'seg'), verbose=True)
        self.timings['data'] = round(time.time() - start, 1)
        return meta

    def train(self, name: str, config: str, scope: str, iters: int, val_interval: int,
              init_from: Optional[str] = None) -> str:
        """Train ``config`` for ``iters`` iterations; ``init_from``: a checkpoint whose
        ``backbone.*`` weights initialise the backbone (``init_cfg=dict(type='Pretrained')``)."""
        work = osp.join(self.work_dir, name)
        options = data_root_options(scope, self.data_root) + [
            f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={val_interval}',
            f'default_hooks.checkpoint.interval={iters}',
            'default_hooks.logger.interval=%d' % max(1, min(10, iters // 10 or 1))]
        if init_from:
            options += ['model.backbone.init_cfg.type=Pretrained',
                        f'model.backbone.init_cfg.checkpoint={init_from}',
                        'model.backbone.init_cfg.prefix=backbone.']
        self.python(f'{name}_train', 'train.py', config, '--work-dir', work, '--cfg-options', *options)
        ckpt = osp.join(work, f'iter_{iters}.pth')
        if not osp.isfile(ckpt):
            raise StepFailed(f'training {name} finished without writing {ckpt}')
        return ckpt

    def test(self, name: str, config: str, scope: str, ckpt: str, *extra: str,
             options: Sequence[str] = ()) -> dict:
        work = osp.join(self.work_dir, 'eval', name)
        before = set(glob.glob(osp.join(work, '*', '*.json')))
        self.python(f'{name}', 'test.py', config, ckpt, '--work-dir', work, *extra,
                    '--cfg-options', *data_root_options(scope, self.data_root), *options)
        new = sorted(set(glob.glob(osp.join(work, '*', '*.json'))) - before)
        if not new:
            raise StepFailed(f'{name}: tools/test.py wrote no metrics file under {work}')
        with open(new[-1], encoding='utf-8') as f:
            return json.load(f)

    def plot(self, name: str, train_dir: str, keys: Sequence[str]) -> Optional[str]:
        logs = sorted(glob.glob(osp.join(train_dir, '*', 'vis_data', 'scalars.json')))
        if not logs:
            return None
        out = osp.join(self.work_dir, 'plots', f'{name}_curves.png')
        self.python(f'{name}_plot', osp.join('analysis_tools', 'plot_curves.py'), logs[-1],
                    '--keys', *keys, '--title', f'{name}: training curves', '--out', out)
        return out

    def contact_sheet(self, pictures: Sequence[str], out: str, columns: int = 4) -> Optional[str]:
        """Tile the first prediction pictures into one image (for READMEs)."""
        if not pictures:
            return None
        from PIL import Image
        images = [Image.open(p).convert('RGB') for p in pictures]
        w = max(i.width for i in images)
        h = max(i.height for i in images)
        cols = min(columns, len(images))
        rows = (len(images) + cols - 1) // cols
        sheet = Image.new('RGB', (cols * w, rows * h), 'white')
        for k, img in enumerate(images):
            sheet.paste(img, ((k % cols) * w, (k // cols) * h))
        os.makedirs(osp.dirname(out), exist_ok=True)
        sheet.save(out)
        return out


def _cpu_times() -> Optional[tuple]:
    """``(idle, total)`` jiffies of all CPUs from ``/proc/stat`` (Linux), else None."""
    try:
        with open('/proc/stat', encoding='ascii') as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)) if len(fields) >= 4 else None


def busy_cores(window: float = 0.5) -> float:
    """CPU cores busy with other work right now: measured over ``window`` seconds from
    ``/proc/stat``, else the 1-minute load average (which lags: right after a busy period, such as
    the mmcv build of ``make setup``, it still reports the cores as busy)."""
    first = _cpu_times()
    if first is not None:
        time.sleep(window)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            cores = os.cpu_count() or 1
            return cores * (1.0 - (second[0] - first[0]) / (second[1] - first[1]))
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def auto_threads(busy: Optional[float] = None) -> int:
    """Intra-op threads for the subprocesses: the CPU cores not busy with other work.

    PyTorch's OpenMP threads spin-wait; on cores that other processes also use they slow down by
    several times, so a busy machine gets fewer threads than it has cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, int(cores - busy + 0.5)))


def _shorten(line: str, width: int = 220) -> str:
    line = re.sub(r'^\d{2}/\d{2} \d{2}:\d{2}:\d{2} - mmengine - \w+ - ', '', line)
    return line if len(line) <= width else line[:width - 4] + ' ...\n'


def _display_path(path: Optional[str]) -> Optional[str]:
    """Relative to the current directory when below it, else absolute."""
    if path is None:
        return None
    path = osp.abspath(path)
    cwd = os.getcwd()
    return osp.relpath(path, cwd) if path.startswith(cwd + os.sep) else path


def _pct(value) -> Optional[float]:
    """COCO metrics are fractions, mmseg's are percentages: report both as percentages."""
    return None if value is None else round(float(value) * 100, 1)


def parse_class_table(log: str) -> Dict[str, Dict[str, float]]:
    """The last ``per class results`` table mmseg's IoUMetric printed in ``log``:
    ``{class: {'IoU': percent, 'Acc': percent}}`` (``nan`` for classes absent from the data)."""
    start = log.rfind('per class results:')
    if start < 0:
        return {}
    table, header = {}, None
    for line in log[start:].splitlines()[1:]:
        line = line.strip()
        if not line.startswith(('|', '+')):
            if table:  # the first line after the table
                break
            continue  # the logger's (empty) line before it
        if line.startswith('+'):
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if header is None:
            header = cells
            continue
        table[cells[0]] = {h: float(c) for h, c in zip(header[1:], cells[1:])}
    return table


def _fmt(value) -> str:
    return '-' if value is None else f'{value:.1f}'


def _round(value) -> Optional[float]:
    return None if value is None else round(float(value), 2)


def render_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ['| ' + ' | '.join(str(c).ljust(w) for c, w in zip(row, widths)) + ' |' for row in rows]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='localattn end-to-end CPU demo (NAT UPerNet + '
                                     'NAT Mask R-CNN on synthetic shapes)')
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'),
                        help='outputs: checkpoints, logs, pictures, plots, summary '
                        '(default: work_dirs/demo)')
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'synthetic'),
                        help='where the synthetic dataset is generated (default: <repo>/data/synthetic)')
    parser.add_argument('--quick', action='store_true',
                        help='a few iterations on a few images (smoke test; scores are meaningless)')
    parser.add_argument('--verbose', action='store_true', help='stream the full subprocess output')
    parser.add_argument('--threads', type=int,
                        help='OMP_NUM_THREADS of the training/testing processes (default: '
                        '$OMP_NUM_THREADS if set, else the number of idle CPU cores)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    profile_name = 'quick' if args.quick else 'full'
    profile = PROFILES[profile_name]
    threads = args.threads
    if threads is None and not os.environ.get('OMP_NUM_THREADS'):
        threads = auto_threads()
    demo = Demo(args.work_dir, args.data_root, profile, verbose=args.verbose, threads=threads)
    wd = demo.work_dir
    start = time.time()
    print(f'localattn demo ({profile_name}): outputs in {wd}; '
          f'{threads or os.environ.get("OMP_NUM_THREADS")} thread(s) per process', flush=True)
    try:
        meta = demo.generate_data()

        demo.banner(f'2/6 train UPerNet + NAT (mmseg), {profile["seg_iters"]} iterations')
        seg_ckpt = demo.train('seg', SEG_CONFIG, 'mmseg', profile['seg_iters'],
                              profile['seg_val_interval'])

        demo.banner('3/6 evaluate the segmenter: single-scale (with pictures), multi-scale + flip')
        seg_pics = osp.join(wd, 'pictures', 'seg')
        seg_ss = demo.test('seg_test', SEG_CONFIG, 'mmseg', seg_ckpt, '--show-dir', seg_pics)
        seg_ms = demo.test('seg_test_tta', SEG_CONFIG, 'mmseg', seg_ckpt, '--tta')
        with open(osp.join(demo.log_dir, 'seg_test.log'), encoding='utf-8') as f:
            seg_classes = parse_class_table(f.read())

        det_init = seg_ckpt if profile.get('det_init') == 'seg' else None
        demo.banner(f'4/6 train Mask R-CNN + NAT (mmdet), {profile["det_iters"]} iterations'
                    + (', backbone initialised from the segmenter\'s' if det_init else '')
                    + ', then evaluate (with pictures)')
        det_ckpt = demo.train('det', DET_CONFIG, 'mmdet', profile['det_iters'],
                              profile['det_val_interval'], init_from=det_init)
        det_pics = osp.join(wd, 'pictures', 'det')
        det = demo.test('det_test', DET_CONFIG, 'mmdet', det_ckpt, '--show-dir', det_pics,
                        options=['test_evaluator.classwise=True'])

        demo.banner('5/6 plots')
        seg_plot = demo.plot('seg', osp.join(wd, 'seg'), ['loss', 'decode.acc_seg', 'lr', 'mIoU'])
        det_plot = demo.plot('det', osp.join(wd, 'det'),
                             ['loss', 'loss_mask', 'bbox_mAP', 'segm_mAP'])
        n = profile['num_pictures']
        seg_files = sorted(glob.glob(osp.join(seg_pics, '**', '*.png'), recursive=True))
        det_files = sorted(glob.glob(osp.join(det_pics, '**', '*.png'), recursive=True))
        seg_sheet = demo.contact_sheet(seg_files[:n], osp.join(wd, 'pictures', 'seg_predictions.png'))
        det_sheet = demo.contact_sheet(det_files[:n], osp.join(wd, 'pictures', 'det_predictions.png'))
    except StepFailed as exc:
        print(f'\nDEMO FAILED: {exc}', file=sys.stderr)
        return 1
    total = round(time.time() - start, 1)

    scores = {
        'seg': {'mIoU': _round(seg_ss.get('mIoU')), 'mIoU_ms_flip': _round(seg_ms.get('mIoU')),
                'aAcc': _round(seg_ss.get('aAcc')), 'mAcc': _round(seg_ss.get('mAcc'))},
        'det': {'bbox_mAP': _pct(det.get('coco/bbox_mAP')),
                'bbox_mAP_50': _pct(det.get('coco/bbox_mAP_50')),
                'segm_mAP': _pct(det.get('coco/segm_mAP')),
                'segm_mAP_50': _pct(det.get('coco/segm_mAP_50'))},
        # per class: segmentation IoU (single scale) and mask AP (COCO mAP@[.5:.95], percent)
        'per_class': {name: {'IoU': seg_classes.get(name, {}).get('IoU'),
                             'mask_AP': _pct(det.get(f'coco/{name}_precision'))}
                      for name in seg_classes},
    }
    rel = _display_path
    summary = dict(
        profile=profile_name,
        settings=dict(profile, threads=threads or os.environ.get('OMP_NUM_THREADS'),
                      seg_config=rel(SEG_CONFIG), det_config=rel(DET_CONFIG),
                      data_root=rel(demo.data_root),
                      val_images=meta.get('params', {}).get('num_val')),
        scores=scores,
        wall_time_s=total,
        step_times_s=demo.timings,
        checkpoints=dict(seg=rel(seg_ckpt), det=rel(det_ckpt)),
        pictures=dict(seg_dir=rel(seg_pics), det_dir=rel(det_pics), seg_sheet=rel(seg_sheet),
                      det_sheet=rel(det_sheet), seg_examples=[rel(p) for p in seg_files[:n]],
                      det_examples=[rel(p) for p in det_files[:n]]),
        plots=dict(seg=rel(seg_plot), det=rel(det_plot)),
        logs=rel(demo.log_dir),
    )
    rows = [('task', 'model', 'metric', 'score'),
            ('segmentation', 'UPerNet + NAT (tiny)', 'mIoU, single scale', scores['seg']['mIoU']),
            ('segmentation', 'UPerNet + NAT (tiny)', 'mIoU, multi-scale + flip',
             scores['seg']['mIoU_ms_flip']),
            ('segmentation', 'UPerNet + NAT (tiny)', 'pixel accuracy (aAcc)', scores['seg']['aAcc']),
            ('detection', 'Mask R-CNN + NAT (tiny)', 'box mAP', scores['det']['bbox_mAP']),
            ('detection', 'Mask R-CNN + NAT (tiny)', 'box mAP@0.5', scores['det']['bbox_mAP_50']),
            ('instance seg.', 'Mask R-CNN + NAT (tiny)', 'mask mAP', scores['det']['segm_mAP']),
            ('instance seg.', 'Mask R-CNN + NAT (tiny)', 'mask mAP@0.5', scores['det']['segm_mAP_50'])]
    table = render_table(rows)
    class_rows = [('class', 'IoU (seg)', 'mask AP (Mask R-CNN)')] + [
        (name, _fmt(v['IoU']), _fmt(v['mask_AP'])) for name, v in scores['per_class'].items()]
    class_table = render_table(class_rows) if len(class_rows) > 1 else '(no per-class results)'
    n_val = summary['settings']['val_images']
    md = [f'# localattn demo ({profile_name})', '',
          f'Scores (percent) on the {n_val} synthetic validation images after '
          f'{profile["seg_iters"]} (seg) / {profile["det_iters"]} (det) training iterations '
          'on CPU: the segmenter from scratch, Mask R-CNN '
          + ('with its backbone initialised from the segmenter\'s (`init_cfg=dict(type=\'Pretrained\')`).'
             if profile.get('det_init') == 'seg' else 'from scratch.'), '', table, '',
          'Per class:', '', class_table, '',
          f'Wall time: {total:.0f} s (' + ', '.join(f'{k} {v:.0f} s' for k, v in demo.timings.items())
          + ').', '',
          f'- Prediction pictures: `{rel(seg_pics)}`, `{rel(det_pics)}`'
          + (f' (overview: `{rel(seg_sheet)}`, `{rel(det_sheet)}`)' if seg_sheet and det_sheet else ''),
          f'- Curves: `{rel(seg_plot)}`, `{rel(det_plot)}`',
          f'- Checkpoints: `{rel(seg_ckpt)}`, `{rel(det_ckpt)}`',
          f'- Logs: `{rel(demo.log_dir)}`', '']
    with open(osp.join(wd, 'summary.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
        f.write('\n')
    with open(osp.join(wd, 'summary.md'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(md))

    demo.banner('6/6 summary')
    print(table)
    print()
    print(class_table)
    print(f'\nwall time {total:.0f} s; summary: {rel(osp.join(wd, "summary.md"))}, '
          f'{rel(osp.join(wd, "summary.json"))}')
    print(f'pictures: {rel(seg_pics)}, {rel(det_pics)}; plots: {rel(seg_plot)}, {rel(det_plot)}')
    if profile_name == 'quick':
        print('(--quick: a smoke run of a few iterations; the scores are not meaningful)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
