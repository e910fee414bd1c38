"""One command that checks and measures the GPU path: NA backends' correctness, backbone training steps,
NA speed and memory against dense SDPA and window attention, backbone throughput against Swin-T.

    python tools/analysis_tools/gpu_check.py --out DIR [--budget SECONDS]   # on a CUDA machine
    python tools/analysis_tools/gpu_check.py --device cpu --quick --out DIR  # the same code paths on CPU

Needs torch and triton. The backbone sections also need mmengine and mmcv (the pure-Python
``mmcv-lite`` wheel is enough: no compiled op is used) and, for Swin-T, timm; a section whose
packages are missing is reported as skipped. Sections run in order of importance and each checks the
remaining ``--budget``; whatever ran is written even when a later section fails.

Section ``triton_tuning`` times the candidate launch settings of the triton kernels (``CANDIDATES`` of
``triton_resources.py``) on NAT-Tiny's NA calls and keeps the fastest for the sections after it; the
report names it.

On CPU (``--device cpu``) the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` is
set before anything imports triton) on small shapes and tiny backbones; timings there only show that
the code runs.

Writes ``DIR/gpu_check.md`` (report), ``DIR/gpu_check.csv`` (one row per measurement) and
``DIR/gpu_check.json`` (the same rows plus the environment).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.environ.get('OUT') or 'work_dirs/gpu_check', help='report folder')
    p.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    p.add_argument('--quick', action='store_true', help='small shapes and tiny models (the CPU test)')
    p.add_argument('--budget', type=float, default=360.0,
                   help='seconds; sections that would start after it are skipped (default 360)')
    p.add_argument('--sections', default='all',
                   help='comma-separated subset of: ' + ', '.join(SECTIONS) + ' (default all)')
    return p.parse_args(argv)


SECTIONS = ('correctness', 'triton_tuning', 'train_steps', 'backbone_speed', 'na_speed', 'flex_correctness',
            'flex_speed', 'flex_backbone_speed')

ROOT = Path(__file__).resolve().parents[2]


class Report:
    """Rows of measurements plus free-text notes, written as markdown, CSV and JSON."""

    def __init__(self, out: Path, env: dict) -> None:
        self.out, self.env, self.rows, self.notes = out, env, [], []
        self.na_times: dict[str, dict[str, float]] = {}  # case -> method -> seconds
        self.backbone_ips: dict[str, float] = {}  # model [backend] -> images/s
        out.mkdir(parents=True, exist_ok=True)

    def add(self, section: str, case: str, backend: str, metric: str, value, status: str = '', note: str = ''):
        row = dict(section=section, case=case, backend=backend, metric=metric,
                   value=round(value, 6) if isinstance(value, float) else value, status=status, note=note)
        self.rows.append(row)
        print(' | '.join(str(v) for v in row.values()), flush=True)

    def note(self, section: str, text: str) -> None:
        self.notes.append((section, text))
        print(f'[{section}] {text}', flush=True)

    def write(self) -> None:
        fields = ['section', 'case', 'backend', 'metric', 'value', 'status', 'note']
        with open(self.out / 'gpu_check.csv', 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.rows)
        with open(self.out / 'gpu_check.json', 'w') as f:
            json.dump(dict(env=self.env, rows=self.rows, notes=self.notes), f, indent=1)
        lines = ['# localattn GPU check', '', '| | |', '|---|---|']
        lines += [f'| {k} | {v} |' for k, v in self.env.items()]
        for section in dict.fromkeys([r['section'] for r in self.rows] + [s for s, _ in self.notes]):
            lines += ['', f'## {section}', '']
            for s, text in self.notes:
                if s == section:
                    lines.append(f'- {text}')
            rows = [r for r in self.rows if r['section'] == section]
            if rows:
                lines += ['', '| ' + ' | '.join(fields[1:]) + ' |', '|' + '---|' * (len(fields) - 1)]
                lines += ['| ' + ' | '.join(str(r[k]) for k in fields[1:]) + ' |' for r in rows]
        (self.out / 'gpu_check.md').write_text('\n'.join(lines) + '\n')


def _err(e: BaseException) -> str:
    """One line with the end of an error message (Triton puts the reason after the source excerpt)."""
    return ' / '.join(line.strip() for line in str(e).splitlines() if line.strip())[-600:]


class Timer:
    """Median wall time of a callable, CUDA-synchronised on GPU."""

    def __init__(self, torch, device: str) -> None:
        self.torch, self.cuda = torch, device == 'cuda'

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, warmup: int = 2, reps: int = 5, max_seconds: float = 5.0) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        start = time.perf_counter()
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > max_seconds:
                break
        times.sort()
        return times[len(times) // 2]

    def peak_mb(self, fn) -> float | None:
        if not self.cuda:
            return None
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()
        base = self.torch.cuda.memory_allocated()
        self.torch.cuda.reset_peak_memory_stats()
        fn()
        self.torch.cuda.synchronize()
        return (self.torch.cuda.max_memory_allocated() - base) / 2 ** 20


# ----------------------------------------------------------------------------------------------------
# correctness
CASES = [  # (name, spatial shape, kernel, dilation, heads, head dim, valid_size, dtypes)
    ('23x37 k7', (23, 37), 7, 1, 2, 32, None, ('float32', 'bfloat16', 'float16')),
    ('29x41 k7 d3', (29, 41), 7, 3, 2, 32, None, ('float32', 'bfloat16')),
    ('17x19 k5x7 d2x1 dim64', (17, 19), (5, 7), (2, 1), 3, 64, None, ('float32', 'bfloat16', 'float16')),
    ('20x26 k7 valid 17x20', (20, 26), 7, 1, 2, 32, (17, 20), ('float32', 'bfloat16')),
    ('56x56 k7 d8 (DiNAT)', (56, 56), 7, 8, 2, 32, None, ('float32', 'bfloat16')),
    ('31x33 k11', (31, 33), 11, 1, 2, 32, None, ('float32', 'bfloat16')),
    ('16x18 k4 (even) d2', (16, 18), 4, 2, 1, 32, None, ('float32',)),
    ('1-D 101 k9 d2', (101,), 9, 2, 2, 32, None, ('float32', 'bfloat16', 'float16')),
    ('3-D 8x14x15 k3x7x7 d1x2x1', (8, 14, 15), (3, 7, 7), (1, 2, 1), 2, 32, None, ('float32', 'bfloat16')),
    ('3-D 9x10x11 k4x5x3 d2x1x3 valid', (9, 10, 11), (4, 5, 3), (2, 1, 3), 1, 64, (8, 10, 9), ('float32',)),
]
QUICK_CASES = [
    ('10x11 k5 d2x1', (10, 11), 5, (2, 1), 2, 16, None, ('float32', 'bfloat16')),
    ('10x8 k4 valid 9x7', (10, 8), 4, 1, 1, 32, (9, 7), ('float32',)),
    ('1-D 21 k7 d2', (21,), 7, 2, 1, 16, None, ('float32',)),
    ('3-D 5x6x7 k3 d1x2x1', (5, 6, 7), 3, (1, 2, 1), 1, 16, None, ('float32',)),
]
TOL = {'float32': 1e-4, 'bfloat16': 2e-2, 'float16': 2e-2}


def check_backend(rep: Report, torch, na, device: str, backend: str, cases, section: str,
                  deadline: float, grads: bool = True, dtypes=None) -> None:
    """Outputs and every gradient (dq, dk, dv, d(rpb)) of ``backend`` against the fp64 reference."""
    for name, shape, k, d, heads, dim, valid, case_dtypes in cases:
        for dtype in (getattr(torch, t) for t in (dtypes or case_dtypes)):
            if time.perf_counter() > deadline:
                rep.note(section, f'budget reached before {name} {dtype}: skipped the rest')
                return
            tname = str(dtype).replace('torch.', '')
            try:
                torch.manual_seed(0)
                n = len(shape)
                op = getattr(na, f'na{n}d')
                ks = (k,) * n if isinstance(k, int) else k
                q, kk, v = (torch.randn(2, *shape, heads, dim, device=device, dtype=dtype) for _ in range(3))
                rpb = (0.5 * torch.randn(heads, *(2 * x - 1 for x in ks), device=device))
                go = torch.randn(2, *shape, heads, dim, device=device, dtype=dtype)
                kwargs = dict(kernel_size=k, dilation=d, valid_size=valid)
                with_grad = grads and not (backend == 'flex' and device == 'cpu')  # flex: no CPU backward
                leaves = [t.detach().requires_grad_(with_grad) for t in (q, kk, v, rpb)]
                out = op(*leaves[:3], rpb=leaves[3], backend=backend, **kwargs)
                ref_leaves = [t.detach().double().requires_grad_() for t in (q, kk, v, rpb)]
                ref = op(*ref_leaves[:3], rpb=ref_leaves[3], backend='reference', **kwargs)
                got, want, names = [out], [ref], ['out']
                if with_grad:
                    got += list(torch.autograd.grad(out, leaves, go))
                    want += list(torch.autograd.grad(ref, ref_leaves, go.double()))
                    names += ['dq', 'dk', 'dv', 'drpb']
                errs = {nm: ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                        for nm, a, b in zip(names, got, want)}
                worst = max(errs.values())
                ok = worst <= TOL[tname] and all(map(bool, (torch.isfinite(t).all() for t in got)))
                rep.add(section, name, backend, f'max rel err {tname}', worst, 'PASS' if ok else 'FAIL',
                        ', '.join(f'{nm} {e:.1e}' for nm, e in errs.items()))
            except Exception as e:  # noqa: BLE001 - every failure is a row of the report
                rep.add(section, name, backend, f'error {tname}', type(e).__name__, 'FAIL', _err(e))


# ----------------------------------------------------------------------------------------------------
# backbones
def build_backbones(quick: bool):
    """``{name: (factory, uses_na)}``; raises ImportError when mmengine/mmcv are missing."""
    from localattn.backbones import NAT, DiNAT, QnAViT

    def nat_arch():
        if not quick:
            return 'tiny'
        return dict(NAT.arch_zoo['tiny'], depths=(1, 1, 1, 1))

    return {
        'NAT-Tiny': (lambda: NAT(arch=nat_arch()), True),
        'DiNAT-Tiny': (lambda: DiNAT(arch=nat_arch(), dilations='imagenet'), True),
        'QnA-ViT-Tiny': (lambda: QnAViT(arch='tiny'), False),
    }


def set_na_backend(model, backend: str) -> int:
    """Point every NA layer of ``model`` at ``backend``; returns how many layers were set."""
    from localattn.layers import NeighborhoodAttention2d
    n = 0
    for m in model.modules():
        if isinstance(m, NeighborhoodAttention2d):
            m.backend = backend
            n += 1
    return n


def train_step_fn(torch, model, x, amp: bool, device: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            outs = model(x)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            loss = sum(o.float().pow(2).mean() for o in outs)
        loss.backward()
        opt.step()
        return loss
    return step


def section_train_steps(rep, torch, device, quick, deadline, backend):
    sec = 'train_steps'
    models = build_backbones(quick)
    size, batch = (32, 1) if quick else (224, 8)
    for name, (make, uses_na) in models.items():
        if time.perf_counter() > deadline:
            rep.note(sec, f'budget reached before {name}')
            return
        try:
            torch.manual_seed(0)
            model = make().to(device).train()
            if uses_na:
                set_na_backend(model, backend)
            x = torch.randn(batch, 3, size, size, device=device)
            step = train_step_fn(torch, model, x, True, device)
            losses = [step().item() for _ in range(1 if quick else 2)]
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            missing = sum(g is None for g in grads)
            finite = all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
            ok = all(map(lambda v: v == v and abs(v) != float('inf'), losses)) and finite and missing == 0
            rep.add(sec, f'{name} {size}px b{batch} bf16 autocast', backend if uses_na else '-',
                    'losses', ' '.join(f'{v:.4g}' for v in losses), 'PASS' if ok else 'FAIL',
                    f'{len(grads)} params, {missing} without grad, grads finite: {finite}')
        except Exception as e:  # noqa: BLE001
            rep.add(sec, name, backend, 'error', type(e).__name__, 'FAIL', _err(e))


def na_kernel_time(torch, step) -> tuple[float, float] | None:
    """GPU time of the triton backend's NA kernels (``triton.KERNELS``) in one call of ``step``,
    and of all kernels, in ms, from ``torch.profiler``; ``None`` when the profiler gives no CUDA events."""
    from torch.profiler import ProfilerActivity, profile

    from localattn.ops.na.backends.triton import KERNELS
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        total = na = 0.0
        for evt in prof.key_averages():
            t = getattr(evt, 'self_device_time_total', None)
            if t is None:
                t = getattr(evt, 'self_cuda_time_total', 0.0)
            total += t
            if any(name in evt.key for name in KERNELS):
                na += t
    except Exception:  # noqa: BLE001 - profiling is an extra; the timing rows stand without it
        return None
    return (na / 1e3, total / 1e3) if total > 0 else None


def section_backbone_speed(rep, torch, device, quick, deadline, timer, backends, with_swin=True):
    sec = 'backbone_speed'
    size, batch = (32, 2) if quick else (224, 64)
    entries = []
    models = build_backbones(quick)
    for backend in backends:
        names = ('NAT-Tiny',) if quick else ('NAT-Tiny', 'DiNAT-Tiny')
        entries += [(f'{n} [{backend}]', models[n][0], backend) for n in names]
    if with_swin:  # Swin-T right after the first NAT entry: the ratio that matters most, if the budget ends
        try:
            import timm
            entries.insert(1, ('Swin-T (timm)', lambda: timm.create_model(
                'swin_tiny_patch4_window7_224', pretrained=False, num_classes=0,
                img_size=size if quick else 224), None))
            entries.append(('QnA-ViT-Tiny', models['QnA-ViT-Tiny'][0], None))
            entries.append(('ResNet-50 (timm)', lambda: timm.create_model('resnet50', pretrained=False,
                                                                            num_classes=0), None))
        except ImportError:
            rep.note(sec, 'timm is not installed: no Swin-T / ResNet-50 baseline')
            entries.append(('QnA-ViT-Tiny', models['QnA-ViT-Tiny'][0], None))
    for name, make, backend in entries:
        if time.perf_counter() > deadline:
            rep.note(sec, f'budget reached before {name}')
            break
        try:
            torch.manual_seed(0)
            model = make().to(device).train()
            if backend is not None:
                set_na_backend(model, backend)
            x = torch.randn(batch, 3, size, size, device=device)
            step = train_step_fn(torch, model, x, True, device)
            sec_per_step = timer(step, warmup=3 if not quick else 1, reps=10 if not quick else 1, max_seconds=20)
            mem = timer.peak_mb(step)
            rep.backbone_ips[name] = batch / sec_per_step
            rep.add(sec, f'{name} {size}px b{batch} train step bf16', backend or '-', 'images/s',
                    batch / sec_per_step, '', f'peak {mem:.0f} MB' if mem is not None else '')
            if backend == 'triton' and device == 'cuda':  # flex's kernels have generated names
                share = na_kernel_time(torch, step)
                if share is not None:
                    rep.add(sec, f'{name} {size}px b{batch} train step bf16', backend, 'NA kernels ms / step',
                            share[0], '', f'of {share[1]:.1f} ms of GPU kernels in the step (torch.profiler)')
            del model, step
        except NotImplementedError as e:  # flex has no CPU backward
            rep.add(sec, name, backend or '-', 'images/s', 'n/a', 'skip', _err(e))
        except Exception as e:  # noqa: BLE001
            rep.add(sec, name, backend or '-', 'error', type(e).__name__, 'FAIL', _err(e))
        if device == 'cuda':
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# NA speed
NA_SHAPES = [  # (name, batch, H, W, heads, dilation)
    ('224 stage1 56x56', 64, 56, 56, 2, 1),
    ('224 stage2 28x28', 64, 28, 28, 4, 1),
    ('224 stage3 14x14', 64, 14, 14, 8, 1),
    ('224 stage4 7x7', 64, 7, 7, 16, 1),
    ('224 stage1 56x56 d8 (DiNAT)', 64, 56, 56, 2, 8),
    ('800x1344 stage1 200x336', 2, 200, 336, 2, 1),
    ('800x1344 stage2 100x168', 2, 100, 168, 4, 1),
    ('800x1344 stage3 50x84', 2, 50, 84, 8, 1),
    ('800x1344 stage4 25x42', 2, 25, 42, 16, 1),
    ('800x1344 stage1 200x336 d28 (DiNAT)', 2, 200, 336, 2, 28),
]
QUICK_SHAPES = [('quick 14x14 d2', 1, 14, 14, 1, 2)]


def _window_attention(torch, F, q, k, v, bias, win: int):
    """Swin-style non-overlapping ``win x win`` windows with an additive bias: ``[B, H, W, h, d]``."""
    b, hh, ww, heads, dim = q.shape
    ph, pw = (-hh) % win, (-ww) % win

    def windows(x):
        x = F.pad(x, (0, 0, 0, 0, 0, pw, 0, ph))
        x = x.view(b, (hh + ph) // win, win, (ww + pw) // win, win, heads, dim)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, win * win, dim)
    out = F.scaled_dot_product_attention(windows(q), windows(k), windows(v), attn_mask=bias)
    out = out.view(b, (hh + ph) // win, (ww + pw) // win, heads, win, win, dim)
    return out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hh + ph, ww + pw, heads, dim)[:, :hh, :ww]


def section_na_speed(rep, torch, na, device, quick, deadline, timer, backends, with_baselines=True):
    import torch.nn.functional as F
    sec = 'na_speed'
    dtype = torch.bfloat16 if device == 'cuda' else torch.float32
    shapes = QUICK_SHAPES if quick else NA_SHAPES
    for name, batch, hh, ww, heads, dil in shapes:
        dim, k = 32, 7
        methods = [(bk, None) for bk in backends]
        if with_baselines:
            methods += [('window attention 7x7 (SDPA + bias)', 'window'), ('dense SDPA (no bias)', 'dense')]
        for label, kind in methods:
            if time.perf_counter() > deadline:
                rep.note(sec, f'budget reached before {name} / {label}')
                return
            try:
                torch.manual_seed(0)
                shape = (batch, hh, ww, heads, dim)
                q, kk, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                go = torch.randn(shape, device=device, dtype=dtype)
                if kind is None:
                    rpb = torch.randn(heads, 2 * k - 1, 2 * k - 1, device=device, requires_grad=True)

                    def run():
                        out = na.na2d(q, kk, v, k, dilation=dil, rpb=rpb, backend=label)
                        out.backward(go)
                elif kind == 'window':
                    bias = torch.randn(heads, k * k, k * k, device=device, dtype=dtype, requires_grad=True)

                    def run():
                        _window_attention(torch, F, q, kk, v, bias, k).backward(go)
                else:
                    qd, kd, vd = (x.detach().reshape(batch, hh * ww, heads, dim).transpose(1, 2).contiguous()
                                  .requires_grad_() for x in (q, kk, v))
                    god = go.reshape(batch, hh * ww, heads, dim).transpose(1, 2).contiguous()

                    def run():
                        F.scaled_dot_product_attention(qd, kd, vd).backward(god)
                t = timer(run, warmup=2, reps=10 if not quick else 1, max_seconds=10)
                mem = timer.peak_mb(run)
                rep.na_times.setdefault(f'{name} b{batch} h{heads} k{k}', {})[label] = t
                rep.add(sec, f'{name} b{batch} h{heads} k{k}', label, 'fwd+bwd ms', t * 1e3, '',
                        f'peak {mem:.0f} MB' if mem is not None else '')
            except NotImplementedError as e:  # flex has no CPU backward
                rep.add(sec, f'{name} b{batch} h{heads}', label, 'fwd+bwd ms', 'n/a', 'skip', _err(e))
            except Exception as e:  # noqa: BLE001
                rep.add(sec, f'{name} b{batch} h{heads}', label, 'error', type(e).__name__, 'FAIL', _err(e))
            if device == 'cuda':
                torch.cuda.empty_cache()


#: NAT-Tiny's NA calls per training step at 224 (stage map, heads, layers): the tuning score
TUNING_SHAPES = [('224 stage1 56x56', 64, 56, 56, 2, 2), ('224 stage2 28x28', 64, 28, 28, 4, 2),
                 ('224 stage3 14x14', 64, 14, 14, 8, 6), ('224 stage4 7x7', 64, 7, 7, 16, 2)]
QUICK_TUNING_SHAPES = [('quick 12x13', 1, 12, 13, 1, 1)]
#: what ``--quick`` compares with the current setting: a smaller tile on one warp
QUICK_CANDIDATES = ('32:1:2@2x8',)


def section_triton_tuning(rep, torch, na, device, quick, deadline, timer) -> None:
    """Time every candidate launch setting of the triton kernels on NAT-Tiny's NA calls (head dim 32),
    check each against the current setting's results, and keep the fastest for the rest of the run (the
    report says which; the entry of ``TUNING`` in ``ops/na/backends/triton.py`` serving head dim 32 is
    the place to make it the default)."""
    from localattn.ops.na.backends import triton as tri
    resources = _resources()
    CANDIDATES, parse_tuning, tuning_label = resources.CANDIDATES, resources.parse_tuning, resources.tuning_label
    sec = 'triton_tuning'
    # the tuning gets at most a third of what is left, so the backbone sections after it still run
    deadline = min(deadline, time.perf_counter() + (deadline - time.perf_counter()) / 3)
    k, dim = 7, 32
    current = tri.tuning_for(dim)  # the entry itself: updating it changes what the backend launches
    start = dict(current)
    candidates = [start] + [c for c in map(parse_tuning, QUICK_CANDIDATES if quick else CANDIDATES) if c != start]
    shapes = QUICK_TUNING_SHAPES if quick else TUNING_SHAPES
    dtype = torch.bfloat16 if device == 'cuda' else torch.float32
    inputs, baseline, totals = {}, {}, {}
    for name, batch, hh, ww, heads, _layers in shapes:
        torch.manual_seed(0)
        shape = (batch, hh, ww, heads, dim)
        inputs[name] = ([torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
                        + [torch.randn(heads, 2 * k - 1, 2 * k - 1, device=device, requires_grad=True),
                           torch.randn(shape, device=device, dtype=dtype)])
    try:
        for settings in candidates:
            label = tuning_label(settings)
            current.update(settings)
            total = 0.0
            for name, batch, _hh, _ww, heads, layers in shapes:
                if time.perf_counter() > deadline:
                    break
                q, kk, v, rpb, go = inputs[name]
                try:
                    def run():
                        out = na.na2d(q, kk, v, k, rpb=rpb, backend='triton')
                        out.backward(go)
                        return out
                    for t in (q, kk, v, rpb):
                        t.grad = None
                    results = [run().detach()] + [t.grad.detach().clone() for t in (q, kk, v, rpb)]
                    if name not in baseline:
                        baseline[name] = results
                    diff = max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()
                               for a, b in zip(results, baseline[name]))
                    t = timer(run, warmup=2, reps=10 if not quick else 1, max_seconds=5)
                    total += t * layers
                    ok = diff <= TOL[str(dtype).replace('torch.', '')]
                    rep.add(sec, f'{name} b{batch} h{heads} k{k}', f'triton {label}', 'fwd+bwd ms', t * 1e3,
                            '' if ok else 'FAIL', f'max rel diff to {tuning_label(start)}: {diff:.1e}')
                except Exception as e:  # noqa: BLE001
                    rep.add(sec, name, f'triton {label}', 'error', type(e).__name__, 'FAIL', _err(e))
                    total = float('inf')
            else:  # every shape timed: the candidate counts
                totals[label] = (total, settings)
                rep.add(sec, 'NAT-Tiny NA per training step (sum over layers)', f'triton {label}', 'ms', total * 1e3)
                continue
            rep.note(sec, f'budget reached while timing {label}: it and the {len(candidates) - len(totals) - 1} '
                     'candidates after it are left out')
            break
    finally:
        current.update(start)
    if totals:
        best_label, (best, settings) = min(totals.items(), key=lambda kv: kv[1][0])
        if best < float('inf'):
            current.update(settings)
            rep.note(sec, f'fastest: {best_label} ({best * 1e3:.2f} ms of NA per NAT-Tiny step, '
                     f'{tuning_label(start)}: {totals[tuning_label(start)][0] * 1e3:.2f} ms); '
                     f'the rest of this run uses it for head dim {dim} (the TUNING entry serving it = {settings})')


def section_ratios(rep: Report) -> None:
    """Side-by-side ratios of what the speed sections measured in this run."""
    sec = 'ratios'
    for case, times in rep.na_times.items():
        if 'triton' not in times:
            continue
        for base in ('flex', 'dense SDPA (no bias)', 'window attention 7x7 (SDPA + bias)'):
            if base in times:
                rep.add(sec, case, 'triton', f'speed-up over {base}', times[base] / times['triton'])
    swin = rep.backbone_ips.get('Swin-T (timm)')
    if swin:
        for name, ips in rep.backbone_ips.items():
            if name != 'Swin-T (timm)':
                rep.add(sec, name, '', 'train-step time / Swin-T', swin / ips)


# ----------------------------------------------------------------------------------------------------
def environment(torch, device: str) -> dict:
    env = {'python': platform.python_version(), 'torch': torch.__version__, 'device': device}
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = 'not installed'
    if device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
        env['cuda'] = torch.version.cuda
    env['interpreter'] = os.environ.get('TRITON_INTERPRET', '0')
    for pkg in ('mmengine', 'mmcv', 'timm'):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001
            env[pkg] = 'not installed'
    env['date'] = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    env['triton TUNING at start'] = tuning_summary()
    return env


def _resources():
    """``triton_resources.py`` (beside this file): the tuning grid and its labels."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import triton_resources
    return triton_resources


def tuning_summary() -> str:
    """The triton backend's launch settings by head-dim bound, e.g. ``<=32: 32:1:2@2x8, <=64: 32:4:2``."""
    from localattn.ops.na.backends import triton as tri
    label = _resources().tuning_label
    return ', '.join(f'<={bound}: {label(c)}' for bound, c in sorted(tri.TUNING.items()))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == 'cpu':
        os.environ['TRITON_INTERPRET'] = '1'  # before anything imports triton
    sys.path.insert(0, str(ROOT / 'projects'))
    import torch

    from localattn.ops import na
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('no CUDA device: use --device cpu', file=sys.stderr)
        return 2
    sections = SECTIONS if args.sections == 'all' else tuple(args.sections.split(','))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f'unknown sections {sorted(unknown)}; choose from {SECTIONS}', file=sys.stderr)
        return 2
    start = time.perf_counter()
    deadline = start + args.budget
    rep = Report(Path(args.out), environment(torch, args.device))
    timer = Timer(torch, args.device)
    cases = QUICK_CASES if args.quick else CASES
    flex_cases = cases[:2] if args.quick else [cases[i] for i in (0, 1, 3, 7)]

    def run(section, fn):
        if section not in sections:
            return
        if time.perf_counter() > deadline:
            rep.note(section, 'skipped: budget reached')
            return
        t0 = time.perf_counter()
        try:
            fn()
        except ImportError as e:
            rep.note(section, f'skipped: {e}')
        except Exception:  # noqa: BLE001
            rep.note(section, 'crashed: ' + traceback.format_exc()[-1500:])
        rep.note(section, f'section time {time.perf_counter() - t0:.1f} s')
        rep.write()

    run('correctness', lambda: check_backend(rep, torch, na, args.device, 'triton', cases, 'correctness',
                                             deadline))
    run('triton_tuning', lambda: section_triton_tuning(rep, torch, na, args.device, args.quick, deadline, timer))
    run('train_steps', lambda: section_train_steps(rep, torch, args.device, args.quick, deadline, 'triton'))
    run('backbone_speed', lambda: section_backbone_speed(rep, torch, args.device, args.quick, deadline, timer,
                                                         ['triton']))
    run('na_speed', lambda: section_na_speed(rep, torch, na, args.device, args.quick, deadline, timer,
                                             ['triton']))
    # flex compiles per shape: after everything else, each section inside the budget
    run('flex_correctness', lambda: check_backend(rep, torch, na, args.device, 'flex', flex_cases,
                                                  'flex_correctness', deadline, dtypes=('float32', 'bfloat16')))
    run('flex_speed', lambda: section_na_speed(rep, torch, na, args.device, args.quick, deadline, timer,
                                               ['flex'], with_baselines=False))
    run('flex_backbone_speed', lambda: section_backbone_speed(rep, torch, args.device, args.quick, deadline,
                                                              timer, ['flex'], with_swin=False))
    section_ratios(rep)
    rep.env['triton TUNING at the end'] = tuning_summary()
    rep.note('summary', f'total {time.perf_counter() - start:.1f} s; '
             f'{sum(r["status"] == "FAIL" for r in rep.rows)} FAIL rows, '
             f'{sum(r["status"] == "PASS" for r in rep.rows)} PASS rows')
    rep.write()
    print(f'report: {Path(args.out) / "gpu_check.md"}')
    return 1 if any(r['status'] == 'FAIL' for r in rep.rows) else 0


if __name__ == '__main__':
    sys.exit(main())
