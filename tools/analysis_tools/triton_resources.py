#!/usr/bin/env python
"""Registers, spills and shared memory of the ``triton`` NA kernels on a GPU target, without a GPU.

Usage::

    python tools/analysis_tools/triton_resources.py [--out DIR] [--dims 32 64] [--dtype bf16]
    python tools/analysis_tools/triton_resources.py --tunings 1:4:3 32:8:2 32:1:2@2x8 --kernel-size 7
    python tools/analysis_tools/triton_resources.py --defaults --dims 16 32 64 128
    python tools/analysis_tools/triton_resources.py --quick

Triton compiles the kernels for a target architecture (default ``sm90``, the H100/H200) on a machine
without a GPU, and the ``ptxas`` shipped with Triton reports what each kernel uses per thread
(``ptxas -v``). For every tuning ``STEP_KEYS:WARPS:STAGES[:MAXNREG][@ROWSxCOLS]`` (see ``TUNING`` in
``ops/na/backends/triton.py``; ``--defaults``: its entry for each head dim), head dim and kernel this
prints registers, bytes spilled to local memory, shared memory, the resident warps per SM those allow,
and the PTX instructions of the inner loop per step, also per computed query-key pair (all threads of
the block: ``loop x 32 x warps / pairs``), the cost that bounds these kernels at small head dims, and
per pair NA needs (times the computed / needed pairs of the tiling on a 56x56 map), which is what
compares tile shapes.
Spills are the solid signal: a spilling kernel moves its working set through local memory on every
step. Register counts are what ``ptxas`` chose under its cap (255, or fewer when the block is larger),
not a minimum, so compare them loosely. Instruction counts are static (PTX, one loop iteration), not
issued instructions. Timing needs the GPU: ``gpu_check.py --sections triton_tuning``.

``--out DIR`` writes ``triton_resources.md`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import csv
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

try:
    import localattn  # noqa: F401
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'projects'))

from localattn.ops.na.backends.triton import KERNELS  # noqa: E402
from localattn.ops.na.indexing import AxisSpec  # noqa: E402

#: per-SM limits of sm90 (H100 / H200): registers, warps, shared memory, blocks
SM90 = dict(regs=65536, warps=64, shared=227 * 1024, blocks=32)
FIELDS = ('kernel', 'ndim', 'tuning', 'tile', 'step_keys', 'warps', 'stages', 'maxnreg', 'dim', 'dtype',
          'kernel_size', 'registers', 'spill_stores', 'spill_loads', 'shared_bytes', 'warps_per_sm',
          'loop_instructions', 'pairs_per_step', 'instructions_per_pair', 'computed_per_needed',
          'instructions_per_needed_pair', 'compile_s')
#: the grid compared by default (and by gpu_check.py's triton_tuning section, in this order: the most
#: promising first, in case its time runs out); ``@RxC``: the tile
CANDIDATES = ('32:4:2', '32:2:2@4x8', '32:1:2@2x8', '1:4:2', '32:4:3', '1:4:3', '64:4:3', '32:8:2', '64:8:2')
#: map on which ``computed_per_needed`` is counted (the NAT stage-1 map of a 224 input)
WASTE_MAP = 56
POINTERS = {'Q', 'K', 'V', 'Out', 'DO', 'DQ', 'DK', 'DV'}
FP32_POINTERS = {'LSE', 'DELTA', 'RPB', 'DRPB'}


def parse_tuning(text: str) -> dict:
    """``STEP_KEYS:WARPS:STAGES[:MAXNREG][@ROWSxCOLS]`` -> settings of ``tiling()`` (tile 8x8 unless given)."""
    fmt = 'STEP_KEYS:WARPS:STAGES[:MAXNREG][@ROWSxCOLS] (e.g. 32:8:2, 32:8:2:128 or 32:4:2@4x8)'
    launch, _, tile_text = text.partition('@')
    try:
        values = [int(x) for x in launch.split(':')]
        tile = tuple(int(x) for x in tile_text.split('x')) if tile_text else (8, 8)
        if len(values) not in (3, 4) or len(tile) != 2:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f'tuning must be {fmt}, got {text!r}') from None
    step, warps, stages = values[:3]
    maxnreg = values[3] if len(values) == 4 else None
    if warps not in (1, 2, 4, 8, 16) or step < 1 or stages < 1 or (maxnreg is not None and not 24 <= maxnreg <= 255):
        raise argparse.ArgumentTypeError(
            f'tuning {text!r}: warps must be a power of two <= 16, step and stages >= 1, maxnreg 24..255')
    from localattn.ops.na.backends.triton import check_tile
    try:
        tile = check_tile(tile)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f'tuning {text!r}: {e}') from None
    return dict(tile=tile, step_keys=step, warps=warps, stages=stages, maxnreg=maxnreg)


def tuning_label(settings: dict) -> str:
    """Inverse of :func:`parse_tuning` (the tile only when it is not 8x8)."""
    label = f"{settings['step_keys']}:{settings['warps']}:{settings['stages']}"
    label += f":{settings['maxnreg']}" if settings.get('maxnreg') else ''
    tile = tuple(settings.get('tile', (8, 8)))
    return label + (f'@{tile[0]}x{tile[1]}' if tile != (8, 8) else '')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tunings', nargs='+', type=parse_tuning, default=None,
                   help='STEP_KEYS:WARPS:STAGES[:MAXNREG][@ROWSxCOLS] (default: the grid CANDIDATES)')
    p.add_argument('--defaults', action='store_true', help="the backend's TUNING entry of each head dim")
    p.add_argument('--dims', nargs='+', type=int, default=[32, 64], help='head dims (default 32 64)')
    p.add_argument('--dtype', choices=('bf16', 'fp16', 'fp32'), default='bf16')
    p.add_argument('--kernel-size', type=int, default=7, help='NA kernel size (square; default 7)')
    p.add_argument('--arch', type=int, default=90, help='CUDA compute capability x10 (default 90)')
    p.add_argument('--out', help='directory for triton_resources.md and .csv')
    p.add_argument('--quick', action='store_true', help='--defaults at head dim 32 only')
    p.add_argument('--3d', dest='three_d', action='store_true',
                   help='the kernels as 3-D calls compile them (a loop over depths; default: 1-D / 2-D calls)')
    return p.parse_args(argv)


def signature(fn, dtype: str, consts: dict) -> tuple[dict, dict, dict]:
    """Triton signature, constexprs and attributes of one of our kernels for pointer dtype ``dtype``.

    The attributes are what Triton's launcher specializes on for the usual inputs: pointers 16-byte
    aligned (PyTorch's allocations) and the tensors' strides multiples of 16 (contiguous or fused-qkv
    ``[B, H, W, heads, D]`` with ``D`` a multiple of 16); sizes are never specialized.
    """
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = 'constexpr'
            constexprs[(i,)] = consts[p.name]
            continue
        if p.name in POINTERS:
            sig[p.name] = f'*{dtype}'
        elif p.name in FP32_POINTERS:
            sig[p.name] = '*fp32'
        else:
            sig[p.name] = 'fp32' if p.name.startswith('scale') else 'i32'
        if sig[p.name].startswith('*') or re.fullmatch(r's[qkvod][bhzyx]', p.name):
            attrs[(i,)] = [['tt.divisibility', 16]]
    return sig, constexprs, attrs


def kernel_constants(t, dim: int, dtype: str, depth: bool = False) -> dict:
    """The compile-time arguments the backend passes for tiling ``t`` and head dim ``dim`` (``depth``: a
    3-D call)."""
    from localattn.ops.na.backends.triton import _pow2
    return dict(D=dim, BD=max(16, _pow2(dim)), HAS_RPB=True, IEEE=dtype == 'fp32', UPCAST=False, DEPTH=depth,
                **{name.upper(): value for name, value in t._asdict().items()})


def ptxas_report(ptx: str, arch: int) -> dict:
    """``ptxas -v`` on one kernel's PTX: registers, spill bytes."""
    from triton.backends.nvidia.compiler import get_ptxas
    tool = get_ptxas(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = osp.join(tmp, 'k.ptx')
        with open(src, 'w') as f:
            f.write(ptx)
        # the flags Triton 3.7's own ptxas call uses (minus line info), so the counts are the kernel's
        proc = subprocess.run([tool.path, '-v', '--regAllocOptLevel=2',
                               f'--gpu-name=sm_{arch}a' if arch >= 90 else f'--gpu-name=sm_{arch}',
                               src, '-o', osp.join(tmp, 'k.cubin')], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'ptxas failed: {proc.stderr[-1000:]}')
    log = proc.stderr

    def grab(pattern):
        m = re.search(pattern, log)
        if m is None:
            raise RuntimeError(f'ptxas -v output without {pattern!r}: {log[-500:]}')
        return int(m.group(1))
    return dict(registers=grab(r'Used (\d+) registers'), spill_stores=grab(r'(\d+) bytes spill stores'),
                spill_loads=grab(r'(\d+) bytes spill loads'))


def loop_instructions(ptx: str) -> int:
    """PTX instructions of the longest innermost loop body (label ... branch back to it, holding no
    other such loop): per thread and step of the kernel's query-key loop (the 3-D kernels nest it in a
    loop over depths)."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels, loops = {}, []
    for i, line in enumerate(lines):
        m = re.match(r'^(\$L__BB\d+_\d+):', line)
        if m:
            labels[m.group(1)] = i
            continue
        m = re.search(r'\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);', line)
        if m and labels.get(m.group(1), i) < i:
            loops.append((labels[m.group(1)], i))
    longest = 0
    for lo, hi in loops:
        if any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in loops):
            continue  # holds an inner loop
        body = lines[lo + 1:hi + 1]
        longest = max(longest, sum(1 for x in body if x.endswith(';') and not x.startswith(('//', '.'))))
    return longest


def pairs_per_step(name: str, t) -> int:
    """Query-key pairs one step of the kernel's loop computes (the tile times the block)."""
    if name == 'na_bwd_dkdv_kernel':
        return t.tkh * t.tkw * t.qrh * t.qw
    return t.tqh * t.tqw * t.krh * t.kw


def warps_per_sm(registers: int, warps: int, shared: int) -> int:
    """Resident warps per sm90 SM given registers per thread (allocated per warp in units of 256)."""
    per_warp = -(-registers * 32 // 256) * 256
    blocks = min(SM90['regs'] // (per_warp * warps), SM90['warps'] // warps, SM90['blocks'],
                 SM90['shared'] // shared if shared else SM90['blocks'])
    return blocks * warps


def compile_kernel(name: str, t, dim: int, dtype: str = 'bf16', arch: int = 90, depth: bool = False):
    """Compile one kernel for ``sm_<arch>`` with tiling ``t`` (``depth``: its 3-D variant); returns
    Triton's compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from localattn.ops.na.backends import _triton_kernels
    from localattn.ops.na.backends.triton import launch_options
    fn = getattr(_triton_kernels, name)
    sig, constexprs, attrs = signature(fn, dtype, kernel_constants(t, dim, dtype, depth))
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget('cuda', arch, 32),
                          options=launch_options(t))


def measure(tunings, dims, dtype: str, ksize: int, arch: int, depth: bool = False) -> list[dict]:
    from localattn.ops.na.backends import triton as tri
    rows = []
    for chosen in tunings:  # None: the backend's default for each head dim
        for dim in dims:
            settings = dict(tri.tuning_for(dim) if chosen is None else chosen)
            label = tuning_label(settings) + (' (default)' if chosen is None else '')
            t = tri.tiling(ksize, ksize, dim, **settings)
            square = (AxisSpec(WASTE_MAP, ksize), AxisSpec(WASTE_MAP, ksize))
            waste = tri.computed_pairs(square, dim, **settings) / (WASTE_MAP ** 2 * ksize ** 2)
            for name in KERNELS:
                t0 = time.perf_counter()
                compiled = compile_kernel(name, t, dim, dtype, arch, depth)
                rep = ptxas_report(compiled.asm['ptx'], arch)
                shared = int(compiled.metadata.shared)
                loop = loop_instructions(compiled.asm['ptx'])
                pairs = pairs_per_step(name, t)
                per_pair = loop * 32 * t.warps / pairs
                rows.append(dict(kernel=name, ndim=3 if depth else 2, tuning=label,
                                 **{**settings, 'tile': f'{t.tqh}x{t.tqw}'}, dim=dim, dtype=dtype,
                                 kernel_size=ksize, shared_bytes=shared,
                                 warps_per_sm=warps_per_sm(rep['registers'], t.warps, shared),
                                 loop_instructions=loop, pairs_per_step=pairs,
                                 instructions_per_pair=round(per_pair, 1), computed_per_needed=round(waste, 2),
                                 instructions_per_needed_pair=round(per_pair * waste, 1),
                                 compile_s=round(time.perf_counter() - t0, 1), **rep))
                print(' '.join(f'{k}={rows[-1][k]}' for k in FIELDS), flush=True)
    return rows


def markdown(rows: list[dict], command: str, arch: int) -> str:
    lines = [f'# Triton NA kernels on sm_{arch}: registers, spills, shared memory', '',
             f'`{command}` (compiled on CPU with Triton\'s `ptxas -v`; no kernel ran).', '',
             f'Computed / needed: the pairs the forward kernel computes over those NA needs on a '
             f'{WASTE_MAP}x{WASTE_MAP} map with this tiling; the last column is the cost that decides between tile '
             'shapes (loop instructions per pair NA needs).', '',
             '| step_keys:warps:stages[:maxnreg][@tile] | head dim | kernel | registers | spill st/ld (B) '
             '| shared (B) | warps/SM | loop instr. / step | pairs / step | thread instr. / pair '
             '| computed / needed | thread instr. / needed pair |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        kernel = r['kernel'] + (' (3-D)' if r['ndim'] == 3 else '')
        lines.append(f"| {r['tuning']} | {r['dim']} | {kernel} | {r['registers']} "
                     f"| {'**' + spill + '**' if r['spill_stores'] or r['spill_loads'] else spill} "
                     f"| {r['shared_bytes']} | {r['warps_per_sm']} | {r['loop_instructions']} | {r['pairs_per_step']} "
                     f"| {r['instructions_per_pair']} | {r['computed_per_needed']} "
                     f"| {r['instructions_per_needed_pair']} |")
    spilling = {r['tuning'] for r in rows if r['spill_stores'] or r['spill_loads']}
    clean = [t for t in dict.fromkeys(r['tuning'] for r in rows) if t not in spilling]
    lines += ['', 'Tunings without spills in any kernel and head dim: ' + (', '.join(clean) or 'none') + '.']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(args.arch)
    except Exception as e:  # noqa: BLE001 - triton or its CUDA backend missing
        print(f'needs triton with its NVIDIA backend (ptxas): {type(e).__name__}: {e}', file=sys.stderr)
        return 2
    if os.environ.get('TRITON_INTERPRET') == '1':
        print('unset TRITON_INTERPRET: the interpreter does not compile kernels', file=sys.stderr)
        return 2
    if args.quick:
        tunings, dims = [None], [32]
    elif args.defaults:
        tunings, dims = [None], args.dims
    else:
        tunings = args.tunings or [parse_tuning(t) for t in CANDIDATES]
        dims = args.dims
    rows = measure(tunings, dims, args.dtype, args.kernel_size, args.arch, args.three_d)
    command = 'python tools/analysis_tools/triton_resources.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, command.strip(), args.arch)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(osp.join(args.out, 'triton_resources.md'), 'w') as f:
            f.write(text)
        with open(osp.join(args.out, 'triton_resources.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
