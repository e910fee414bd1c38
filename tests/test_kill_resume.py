"""Kill a training run (SIGKILL) and continue it with ``tools/train.py --resume``.

The demo's tiny NAT classifier (configs/_demo_/nat-demo_synthetic-cls.py) on generated data, 8
iterations, a checkpoint every 2, deterministic settings, one thread:

* killed mid-training after the iteration-2 checkpoint, then resumed: the run ends at iteration 8
  with the same losses (iterations 3-8), weights, optimizer and scheduler state as an uninterrupted
  run (equal within ``TOL``; in practice bit-identical on CPU), and at most one checkpoint interval
  of work was lost;
* killed while writing the iteration-4 checkpoint: no truncated ``iter_4.pth`` is left and
  ``--resume`` continues from iteration 2;
* killed while rewriting ``last_checkpoint`` (left empty): ``--resume`` continues from the newest
  complete checkpoint.

The kills during writes are placed by a launcher that wraps ``open`` in the training process: the
first write to the named file writes half the bytes (or nothing), flushes and SIGKILLs the process.
"""
import importlib.util
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

import localattn  # noqa: F401  the weights-only allow-list for reading the checkpoints
from localattn.checkpoint import load_local_checkpoint

pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', '_demo_', 'nat-demo_synthetic-cls.py')
MAX_ITERS, INTERVAL = 8, 2
#: Tolerance of the comparison with the uninterrupted run (weights, optimizer moments, losses).
TOL = dict(rtol=1e-5, atol=1e-6)

LAUNCHER = '''
import builtins, os, runpy, signal, sys
target, mode = os.environ['KILL_ON_WRITE'], os.environ.get('KILL_MODE', 'half')
real_open = builtins.open


class Dying:
    def __init__(self, f):
        self.f = f

    def write(self, data):
        if mode == 'half':
            self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def patched(file, mode_='r', *args, **kwargs):
    f = real_open(file, mode_, *args, **kwargs)
    if isinstance(file, (str, bytes, os.PathLike)) and 'w' in mode_ and \\
            os.path.basename(os.fsdecode(file)).startswith(target):
        return Dying(f)
    return f


builtins.open = patched
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    spec = importlib.util.spec_from_file_location(
        'localattn_generate_synthetic_kill', osp.join(ROOT, 'tools', 'dataset_converters',
                                                      'generate_synthetic.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(root, num_train=8, num_val=4, size=64, seed=0, tasks=('cls', ))
    return osp.join(root, 'cls')


def _options(data_root):
    return [*(f'{s}_dataloader.dataset.data_root={data_root}' for s in ('train', 'val', 'test')),
            'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2',
            f'train_cfg.max_iters={MAX_ITERS}', 'train_cfg.val_interval=1000',
            f'default_hooks.checkpoint.interval={INTERVAL}', 'default_hooks.logger.interval=1',
            'randomness.deterministic=True', 'randomness.seed=0']


def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1',
            'CUBLAS_WORKSPACE_CONFIG': ':4096:8'}


def _train_cmd(work, data_root, *extra):
    return [sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', str(work),
            *extra, '--cfg-options', *_options(data_root)]


def _run(cmd, cwd, env=None, expect_kill=False):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env or _env())
    out = proc.stdout + proc.stderr
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, f'rc={proc.returncode}\n' + out[-4000:]
    else:
        assert proc.returncode == 0, out[-5000:]
    return out


def _losses(work):
    """``{step: loss}`` over every run's scalars.json in ``work`` (a later run overrides)."""
    losses = {}
    for path in sorted(p for p in (osp.join(work, d, 'vis_data', 'scalars.json')
                                   for d in sorted(os.listdir(work))) if osp.isfile(p)):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record:
                    losses[record['step']] = record['loss']
    return losses


@pytest.fixture(scope='module')
def reference(data_root, tmp_path_factory):
    """The uninterrupted run: final checkpoint and losses."""
    work = tmp_path_factory.mktemp('uninterrupted')
    _run(_train_cmd(work, data_root), cwd=str(work))
    return load_local_checkpoint(str(work / f'iter_{MAX_ITERS}.pth')), _losses(str(work))


def _assert_same_run(final, reference, losses, ref_losses, from_iter):
    ref = reference
    worst = max((final['state_dict'][k].float() - v.float()).abs().max().item() for k, v in ref['state_dict'].items())
    print(f'max |resumed - uninterrupted| over the weights: {worst:.3g}')
    assert final['meta']['iter'] == MAX_ITERS
    info, ref_info = final['message_hub']['runtime_info'], ref['message_hub']['runtime_info']
    assert (info['iter'], info['max_iters']) == (ref_info['iter'], ref_info['max_iters'])
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(final['state_dict'][key], value, **TOL, msg=key)
    ref_state, state = ref['optimizer']['state'], final['optimizer']['state']
    assert ref_state.keys() == state.keys()
    for index in ref_state:
        for name, value in ref_state[index].items():
            torch.testing.assert_close(state[index][name], value, **TOL, msg=f'{index}.{name}')
    assert [g['lr'] for g in final['optimizer']['param_groups']] == \
        pytest.approx([g['lr'] for g in ref['optimizer']['param_groups']])
    assert final['param_schedulers'] == ref['param_schedulers']
    for step in range(from_iter + 1, MAX_ITERS + 1):
        assert losses[step] == pytest.approx(ref_losses[step], rel=TOL['rtol'], abs=TOL['atol']), step


def test_sigkill_mid_training_then_resume(data_root, reference, tmp_path):
    work = tmp_path / 'work'
    log_path = tmp_path / 'killed.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(_train_cmd(work, data_root), cwd=str(tmp_path), stdout=log,
                                stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        # wait until the iteration-2 checkpoint is complete and training has moved on
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            text = log_path.read_text()
            if 'Saving checkpoint at 2 iterations' in text and f'Iter(train) [3/{MAX_ITERS}]' in text:
                break
            time.sleep(0.02)
        assert proc.poll() is None, 'the run ended before it could be killed:\n' + log_path.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = max(_losses(str(work)), default=0)  # the last iteration whose loss was logged
    assert not osp.exists(work / f'iter_{MAX_ITERS}.pth')

    out = _run(_train_cmd(work, data_root, '--resume'), cwd=str(tmp_path))
    resumed = int(out.split('resumed epoch: 0, iter: ')[1].split()[0].strip(',.'))
    assert resumed >= 2 and killed_at - resumed <= INTERVAL, (killed_at, resumed)  # <= 1 interval lost
    final = load_local_checkpoint(str(work / f'iter_{MAX_ITERS}.pth'))
    _assert_same_run(final, reference[0], _losses(str(work)), reference[1], resumed)


def _killed_during_write(data_root, tmp_path, target, mode):
    launcher = tmp_path / 'launch_and_die.py'
    launcher.write_text(LAUNCHER)
    work = tmp_path / 'work'
    cmd = _train_cmd(work, data_root)
    cmd.insert(1, str(launcher))
    _run(cmd, cwd=str(tmp_path), env={**_env(), 'KILL_ON_WRITE': target, 'KILL_MODE': mode},
         expect_kill=True)
    return work


def test_sigkill_while_writing_a_checkpoint(data_root, reference, tmp_path):
    work = _killed_during_write(data_root, tmp_path, 'iter_4.pth', 'half')
    # never a truncated checkpoint under the final name
    if osp.exists(work / 'iter_4.pth'):
        load_local_checkpoint(str(work / 'iter_4.pth'))
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')

    out = _run(_train_cmd(work, data_root, '--resume'), cwd=str(tmp_path))
    assert 'resumed epoch: 0, iter: 2' in out
    assert not [n for n in os.listdir(work) if '.tmp-' in n]  # the partial write was cleaned up
    final = load_local_checkpoint(str(work / f'iter_{MAX_ITERS}.pth'))
    _assert_same_run(final, reference[0], _losses(str(work)), reference[1], 2)


def test_sigkill_while_rewriting_last_checkpoint(data_root, reference, tmp_path):
    work = _killed_during_write(data_root, tmp_path, 'last_checkpoint', 'empty')
    assert (work / 'last_checkpoint').read_text() == ''  # killed right after the truncation
    load_local_checkpoint(str(work / 'iter_2.pth'))  # complete

    out = _run(_train_cmd(work, data_root, '--resume'), cwd=str(tmp_path))
    assert 'resumed epoch: 0, iter: 2' in out and 'newest complete checkpoint' in out
    final = load_local_checkpoint(str(work / f'iter_{MAX_ITERS}.pth'))
    _assert_same_run(final, reference[0], _losses(str(work)), reference[1], 2)
