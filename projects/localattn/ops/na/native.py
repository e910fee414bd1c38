"""Compiled CPU kernel of the ``tiled`` backend: exact per-query neighbour loops in C++.

The loops visit exactly ``prod(k)`` keys per query (the pure-torch tiles visit ``prod(T + k - 1)``), so
on CPU this is the fast path. It needs nothing but a C++ compiler: the source below is built once with
``$CXX`` (else ``g++``/``c++``), ``-O3 -march=native``, cached under ``$LOCALATTN_CACHE_DIR`` (default
``~/.cache/localattn``) keyed by a hash of source, compiler, flags and CPU, and loaded with ``ctypes``.
When no compiler is found or the build fails (or ``LOCALATTN_NA_NATIVE=0``), :func:`library` returns
``None`` and the pure-torch tiles are used instead.

Forward saves the log-sum-exp per (query, head); backward recomputes the probabilities, first per query
(``dq``, RPB gradient) then per key over the queries whose window holds it (``dk``, ``dv``), so no
scatter races and no atomics. fp16/bf16 run in fp32, fp64 in fp64.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .indexing import AxisSpec, axis_inverse, axis_windows

PAD = 8  # zero columns after each transposed row (one vector step)
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-shared', '-fPIC', '-std=c++17', '-pthread')

SOURCE = r'''
// Exact neighbourhood attention on CPU, one (batch*head, position) at a time.
// Row layouts [BH, N, C]; transposed layouts [BH, C, NP] (NP >= N + V) so that a run of neighbours
// that is contiguous along the last axis becomes a vector lane run for every channel.
// The last axis has dilation 1 here (the caller makes dilation groups contiguous).
// Per-axis tables tab[3][5][Lmax]: 0 first key, 1 key count, 2 RPB index of the first key
// (query-indexed); 3 first query, 4 query count (key-indexed: queries whose window holds the key).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int V = 8;    // lanes of one segment (a run of neighbours along the last axis)
constexpr int G = 4;    // segments per dot-product group (independent accumulator chains)
constexpr int CW = 32;  // channels per accumulation chunk

struct Geometry {
  int64_t BH, H, N, NP, C, L[3], d[3], K[3], W[3], Lmax, R, M;
  const int64_t* tab;
  int64_t at(int axis, int field, int64_t i) const { return tab[(axis * 5 + field) * Lmax + i]; }
  void coords(int64_t n, int64_t* x) const {
    x[2] = n % L[2];
    x[1] = (n / L[2]) % L[1];
    x[0] = n / (L[1] * L[2]);
  }
};

struct Segment {
  int64_t base, rel, len, step;  // positions base + l, RPB indices rel + step * l, l < len <= V
};

inline float exp_approx(float x) {  // Cephes-style expf, vectorisable, ~2 ulp on [-87, 88]
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504f + 0.5f);
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline double exp_approx(double x) { return std::exp(x); }

template <typename F>
void parallel_for(int64_t n, int threads, F fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(fn, t, t * chunk, std::min(n, (t + 1) * chunk));
  fn(0, 0, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// Segments of the window of query n (keys; RPB index increasing along a segment).
inline int64_t key_segments(const Geometry& g, int64_t n, Segment* seg) {
  int64_t x[3], f[3], c[3], r[3], ns = 0;
  g.coords(n, x);
  for (int a = 0; a < 3; ++a) f[a] = g.at(a, 0, x[a]), c[a] = g.at(a, 1, x[a]), r[a] = g.at(a, 2, x[a]);
  for (int64_t t0 = 0; t0 < c[0]; ++t0)
    for (int64_t t1 = 0; t1 < c[1]; ++t1) {
      const int64_t base = ((f[0] + g.d[0] * t0) * g.L[1] + f[1] + g.d[1] * t1) * g.L[2] + f[2];
      const int64_t rel = ((r[0] + t0) * g.W[1] + r[1] + t1) * g.W[2] + r[2];
      for (int64_t x0 = 0; x0 < c[2]; x0 += V) seg[ns++] = {base + x0, rel + x0, std::min<int64_t>(V, c[2] - x0), 1};
    }
  return ns;
}

// Segments of the queries whose window holds key n (RPB index (key - query) / d + k - 1, stride 1).
inline int64_t query_segments(const Geometry& g, int64_t n, Segment* seg) {
  int64_t x[3], f[3], c[3], ns = 0;
  g.coords(n, x);
  for (int a = 0; a < 3; ++a) f[a] = g.at(a, 3, x[a]), c[a] = g.at(a, 4, x[a]);
  for (int64_t t0 = 0; t0 < c[0]; ++t0)
    for (int64_t t1 = 0; t1 < c[1]; ++t1) {
      const int64_t q0 = f[0] + g.d[0] * t0, q1 = f[1] + g.d[1] * t1;
      const int64_t base = (q0 * g.L[1] + q1) * g.L[2] + f[2];
      const int64_t rel = (((x[0] - q0) / g.d[0] + g.K[0] - 1) * g.W[1] + (x[1] - q1) / g.d[1] + g.K[1] - 1) * g.W[2] +
                          x[2] - f[2] + g.K[2] - 1;
      for (int64_t x0 = 0; x0 < c[2]; x0 += V) seg[ns++] = {base + x0, rel - x0, std::min<int64_t>(V, c[2] - x0), -1};
    }
  return ns;
}

// For every segment: s[l] = sum_c a[c] * bt[c * NP + base + l] and (TWO) p[l] likewise with a2, b2t.
// Writes the valid lanes of all segments contiguously (entry j), with position idx[j] and RPB index rel[j].
template <typename T, bool TWO>
int64_t segment_dots(const Geometry& g, const Segment* seg, int64_t ns, const T* a, const T* bt, const T* a2,
                     const T* b2t, T* s, T* p, int64_t* idx, int64_t* rel) {
  int64_t m = 0;
  for (int64_t s0 = 0; s0 < ns; s0 += G) {
    int64_t base[G];
    for (int i = 0; i < G; ++i) base[i] = seg[std::min<int64_t>(s0 + i, ns - 1)].base;
    T acc[G][V] = {}, acc2[G][V] = {};
    for (int64_t c = 0; c < g.C; ++c) {
      const T ac = a[c], ac2 = TWO ? a2[c] : T(0);
      const T *b = bt + c * g.NP, *b2 = TWO ? b2t + c * g.NP : nullptr;
      for (int i = 0; i < G; ++i) {
#pragma omp simd
        for (int l = 0; l < V; ++l) acc[i][l] += ac * b[base[i] + l];
        if (TWO) {
#pragma omp simd
          for (int l = 0; l < V; ++l) acc2[i][l] += ac2 * b2[base[i] + l];
        }
      }
    }
    for (int64_t i = 0; i < std::min<int64_t>(G, ns - s0); ++i) {
      const Segment& sg = seg[s0 + i];
      for (int64_t l = 0; l < sg.len; ++l, ++m) {
        s[m] = acc[i][l];
        if (TWO) p[m] = acc2[i][l];
        idx[m] = sg.base + l;
        rel[m] = sg.rel + sg.step * l;
      }
    }
  }
  return m;
}

// out[c] = sum_j w[j] * X[idx[j] * C + c], accumulated in registers chunk by chunk.
template <typename T>
void weighted_rows(const T* w, const int64_t* idx, int64_t m, const T* X, int64_t C, T* out) {
  for (int64_t c0 = 0; c0 < C; c0 += CW) {
    const int64_t width = std::min<int64_t>(CW, C - c0);
    T acc0[CW] = {}, acc1[CW] = {};
    int64_t j = 0;
    if (width == CW)
      for (; j + 1 < m; j += 2) {
        const T *x0 = X + idx[j] * C + c0, *x1 = X + idx[j + 1] * C + c0;
        const T w0 = w[j], w1 = w[j + 1];
#pragma omp simd
        for (int l = 0; l < CW; ++l) acc0[l] += w0 * x0[l], acc1[l] += w1 * x1[l];
      }
    for (; j < m; ++j) {
      const T* x = X + idx[j] * C + c0;
      for (int64_t l = 0; l < width; ++l) acc0[l] += w[j] * x[l];
    }
    for (int64_t l = 0; l < width; ++l) out[c0 + l] = acc0[l] + acc1[l];
  }
}

template <typename T>
struct Scratch {
  std::vector<Segment> seg;
  std::vector<T> s, p, w;
  std::vector<int64_t> idx, rel;
  explicit Scratch(int64_t m) : seg(m), s(m), p(m), w(m), idx(m), rel(m) {}
};

template <typename T>
void forward(const Geometry& g, const T* qr, const T* kt, const T* vr, const T* rpb, T scale, T* out, T* lse,
             int threads) {
  parallel_for(g.BH * g.N, threads, [&](int, int64_t lo, int64_t hi) {
    Scratch<T> sc(g.M);
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bh = u / g.N;
      const int64_t ns = key_segments(g, u % g.N, sc.seg.data());
      const int64_t m = segment_dots<T, false>(g, sc.seg.data(), ns, qr + u * g.C, kt + bh * g.C * g.NP, nullptr,
                                               nullptr, sc.s.data(), nullptr, sc.idx.data(), sc.rel.data());
      T* s = sc.s.data();
      const T* bias = rpb ? rpb + (bh % g.H) * g.R : nullptr;
      T mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < m; ++j) s[j] = s[j] * scale + (bias ? bias[sc.rel[j]] : T(0)), mx = std::max(mx, s[j]);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) s[j] = exp_approx(s[j] - mx);
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < m; ++j) sum += s[j];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) s[j] /= sum;
      lse[u] = m ? mx + std::log(sum) : T(INFINITY);
      weighted_rows(s, sc.idx.data(), m, vr + bh * g.N * g.C, g.C, out + u * g.C);
    }
  });
}

// dq and the RPB gradient, visiting each query's window; delta = rowsum(dO * O).
template <typename T>
void backward_query(const Geometry& g, const T* qr, const T* kr, const T* kt, const T* vt, const T* rpb, T scale,
                    const T* lse, const T* gr, const T* delta, T* dq, T* drpb, int threads) {
  std::vector<std::vector<T>> part(threads, std::vector<T>(drpb ? g.H * g.R : 0, T(0)));
  parallel_for(g.BH * g.N, threads, [&](int thread, int64_t lo, int64_t hi) {
    Scratch<T> sc(g.M);
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bh = u / g.N;
      const int64_t ns = key_segments(g, u % g.N, sc.seg.data());
      const int64_t m = segment_dots<T, true>(g, sc.seg.data(), ns, qr + u * g.C, kt + bh * g.C * g.NP, gr + u * g.C,
                                              vt + bh * g.C * g.NP, sc.s.data(), sc.p.data(), sc.idx.data(), sc.rel.data());
      const T* bias = rpb ? rpb + (bh % g.H) * g.R : nullptr;
      T *s = sc.s.data(), *dp = sc.p.data(), *w = sc.w.data();
      const T dl = delta[u];
      for (int64_t j = 0; j < m; ++j) s[j] = s[j] * scale + (bias ? bias[sc.rel[j]] : T(0)) - lse[u];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) w[j] = exp_approx(s[j]) * (dp[j] - dl);  // dS
      if (drpb) {
        T* db = part[thread].data() + (bh % g.H) * g.R;
        for (int64_t j = 0; j < m; ++j) db[sc.rel[j]] += w[j];
      }
      weighted_rows(w, sc.idx.data(), m, kr + bh * g.N * g.C, g.C, dq + u * g.C);
      for (int64_t c = 0; c < g.C; ++c) dq[u * g.C + c] *= scale;
    }
  });
  if (drpb)
    for (int64_t i = 0; i < g.H * g.R; ++i) {
      T total = 0;
      for (int t = 0; t < threads; ++t) total += part[t][i];
      drpb[i] = total;
    }
}

// dk and dv, visiting the queries whose window holds each key.
template <typename T>
void backward_key(const Geometry& g, const T* qr, const T* qt, const T* kr, const T* vr, const T* rpb, T scale,
                  const T* lse, const T* gr, const T* gt, const T* delta, T* dk, T* dv, int threads) {
  parallel_for(g.BH * g.N, threads, [&](int, int64_t lo, int64_t hi) {
    Scratch<T> sc(g.M);
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bh = u / g.N;
      const int64_t ns = query_segments(g, u % g.N, sc.seg.data());
      const int64_t m = segment_dots<T, true>(g, sc.seg.data(), ns, kr + u * g.C, qt + bh * g.C * g.NP, vr + u * g.C,
                                              gt + bh * g.C * g.NP, sc.s.data(), sc.p.data(), sc.idx.data(), sc.rel.data());
      const T* bias = rpb ? rpb + (bh % g.H) * g.R : nullptr;
      const T *ls = lse + bh * g.N, *dl = delta + bh * g.N;
      T *s = sc.s.data(), *dp = sc.p.data(), *w = sc.w.data();
      for (int64_t j = 0; j < m; ++j) s[j] = s[j] * scale + (bias ? bias[sc.rel[j]] : T(0)) - ls[sc.idx[j]];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) s[j] = exp_approx(s[j]);  // P
      for (int64_t j = 0; j < m; ++j) w[j] = s[j] * (dp[j] - dl[sc.idx[j]]) * scale;  // scale * dS
      weighted_rows(w, sc.idx.data(), m, qr + bh * g.N * g.C, g.C, dk + u * g.C);
      weighted_rows(s, sc.idx.data(), m, gr + bh * g.N * g.C, g.C, dv + u * g.C);
    }
  });
}

Geometry make_geometry(const int64_t* meta, const int64_t* tab) {
  // meta: BH, H, N, NP, C, L[3], d[3], K[3], Lmax, M
  Geometry g;
  g.BH = meta[0], g.H = meta[1], g.N = meta[2], g.NP = meta[3], g.C = meta[4];
  for (int a = 0; a < 3; ++a) g.L[a] = meta[5 + a], g.d[a] = meta[8 + a], g.K[a] = meta[11 + a], g.W[a] = 2 * g.K[a] - 1;
  g.Lmax = meta[14], g.M = meta[15] + G, g.R = g.W[0] * g.W[1] * g.W[2], g.tab = tab;
  return g;
}

}  // namespace

#define NA_EXPORT(T, SUFFIX)                                                                                  \
  extern "C" void na_forward_##SUFFIX(const int64_t* meta, const int64_t* tab, const T* qr, const T* kt,       \
                                      const T* vr, const T* rpb, double scale, T* out, T* lse, int threads) { \
    forward<T>(make_geometry(meta, tab), qr, kt, vr, rpb, T(scale), out, lse, threads);                      \
  }                                                                                                           \
  extern "C" void na_backward_##SUFFIX(const int64_t* meta, const int64_t* tab, const T* qr, const T* qt,      \
                                       const T* kr, const T* kt, const T* vr, const T* vt, const T* rpb,       \
                                       double scale, const T* lse, const T* gr, const T* gt, const T* delta,   \
                                       T* dq, T* dk, T* dv, T* drpb, int threads) {                            \
    const Geometry g = make_geometry(meta, tab);                                                              \
    backward_query<T>(g, qr, kr, kt, vt, rpb, T(scale), lse, gr, delta, dq, drpb, threads);                   \
    backward_key<T>(g, qr, qt, kr, vr, rpb, T(scale), lse, gr, gt, delta, dk, dv, threads);                   \
  }

NA_EXPORT(float, f32)
NA_EXPORT(double, f64)
'''


def _cpu_id() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return next((line for line in f if line.startswith('flags')), platform.processor())
    except OSError:
        return platform.processor()


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first use), or ``None`` when unavailable or disabled."""
    if os.environ.get('LOCALATTN_NA_NATIVE', '1') == '0':
        return None
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if compiler is None:
        return None
    digest = hashlib.sha256('\0'.join([SOURCE, compiler, *FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get('LOCALATTN_CACHE_DIR', Path.home() / '.cache' / 'localattn'))
    target = cache_dir / f'na_cpu_{digest}.so'
    try:
        if not target.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
                src, out = Path(tmp) / 'na_cpu.cpp', Path(tmp) / 'na_cpu.so'
                src.write_text(SOURCE, encoding='utf-8')
                subprocess.run([compiler, *FLAGS, str(src), '-o', str(out)], check=True, capture_output=True,
                               text=True, timeout=600)
                os.replace(out, target)  # atomic: concurrent builders are harmless
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, 'stderr', '') or err
        warnings.warn(f'localattn: NA CPU kernel unavailable, using pure-torch tiles ({detail})')
        return None
    ptr, i32, f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for suffix in ('f32', 'f64'):
        getattr(lib, f'na_forward_{suffix}').argtypes = [ptr] * 6 + [f64, ptr, ptr, i32]
        getattr(lib, f'na_backward_{suffix}').argtypes = [ptr] * 9 + [f64] + [ptr] * 8 + [i32]
    return lib


class _Plan(NamedTuple):
    meta: tuple[int, ...]  # L[3], d[3], K[3], Lmax, max neighbours of the axes padded to 3-D
    tab: Tensor  # [3, 5, Lmax] int64 window / inverse-window tables
    perm: Tensor | None  # new -> old position along the last axis (dilation groups made contiguous)
    inverse: Tensor | None  # old -> new position


@functools.lru_cache(maxsize=64)
def _plan(axes: tuple[AxisSpec, ...]) -> _Plan:
    """Kernel tables of ``axes`` padded to 3-D; the last axis is reordered group-major when dilated."""
    axes = (AxisSpec(1, 1),) * (3 - len(axes)) + axes
    lmax = max(ax.length for ax in axes)
    tab = torch.zeros(3, 5, lmax, dtype=torch.long)
    for a, ax in enumerate(axes):
        win = axis_windows(ax)
        tab[a, :, :ax.length] = torch.stack([win.first, win.count, win.rel, *axis_inverse(ax)])
    last = axes[2]
    perm = inverse = None
    if last.dilation > 1:
        perm = torch.cat([torch.arange(g, last.length, last.dilation) for g in range(last.dilation)])
        inverse = torch.argsort(perm)
        fields = tab[2, :, :last.length][:, perm]
        fields[0], fields[3] = inverse[fields[0]], inverse[fields[3]]
        tab[2, :, :last.length] = fields
    most = max(math.prod(int(tab[a, f].max()) for a in range(3)) for f in (1, 4))  # neighbours per position
    meta = (*(ax.length for ax in axes), axes[0].dilation, axes[1].dilation, 1, *(ax.kernel for ax in axes), lmax,
            most)
    return _Plan(meta, tab, perm, inverse)


def _rows(x: Tensor, perm: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[B, *spatial, H, C]`` -> ``[B * H, N, C]`` (last spatial axis reordered by ``perm``)."""
    if perm is not None:
        x = x.index_select(x.dim() - 3, perm)
    b, h, c = x.shape[0], x.shape[-2], x.shape[-1]
    return x.reshape(b, -1, h, c).transpose(1, 2).to(dtype).contiguous().view(b * h, -1, c)


def _columns(rows: Tensor) -> Tensor:
    """``[BH, N, C]`` -> ``[BH, C, N + PAD]`` (zero padding: vector steps may read past a row end)."""
    return F.pad(rows.transpose(1, 2), (0, PAD))


def _unrows(rows: Tensor, shape: torch.Size, dtype: torch.dtype, inverse: Tensor | None) -> Tensor:
    """Inverse of :func:`_rows`: ``[B * H, N, C]`` -> ``shape`` ``[B, *spatial, H, C]`` in ``dtype``."""
    b, h, c = shape[0], shape[-2], shape[-1]
    x = rows.view(b, h, *shape[1:-2], c).movedim(1, -2)
    if inverse is not None:
        x = x.index_select(x.dim() - 3, inverse)
    return x.to(dtype).contiguous()


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


class _NativeNA(torch.autograd.Function):
    """Autograd wrapper of the compiled forward/backward kernels."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None,
                axes: tuple[AxisSpec, ...], scale: float) -> Tensor:
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        plan = _plan(axes)
        qr, kr, vr = (_rows(x, plan.perm, dtype) for x in (query, key, value))
        kt = _columns(kr)
        bias = None if rpb is None else rpb.detach().to(dtype).contiguous()
        bh, n, c = qr.shape
        meta = torch.tensor((bh, query.shape[-2], n, n + PAD, c, *plan.meta), dtype=torch.long)
        out = torch.empty_like(qr)
        lse = qr.new_empty(bh, n)
        lib = library()
        fn = lib.na_forward_f64 if dtype == torch.float64 else lib.na_forward_f32
        fn(_ptr(meta), _ptr(plan.tab), _ptr(qr), _ptr(kt), _ptr(vr), _ptr(bias), scale, _ptr(out), _ptr(lse),
           torch.get_num_threads())
        ctx.save_for_backward(qr, kr, kt, vr, bias, out, lse, meta)
        ctx.plan, ctx.scale, ctx.shape = plan, scale, query.shape
        ctx.dtypes = query.dtype, None if rpb is None else rpb.dtype
        return _unrows(out, query.shape, query.dtype, plan.inverse)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        qr, kr, kt, vr, bias, out, lse, meta = ctx.saved_tensors
        plan = ctx.plan
        gr = _rows(grad_out, plan.perm, qr.dtype)
        delta = (gr * out).sum(-1)
        dq, dk, dv = (torch.empty_like(qr) for _ in range(3))
        d_bias = None if bias is None else torch.empty_like(bias)
        lib = library()
        fn = lib.na_backward_f64 if qr.dtype == torch.float64 else lib.na_backward_f32
        qt, vt, gt = _columns(qr), _columns(vr), _columns(gr)  # keep references while the kernel runs
        fn(_ptr(meta), _ptr(plan.tab), _ptr(qr), _ptr(qt), _ptr(kr), _ptr(kt), _ptr(vr), _ptr(vt), _ptr(bias),
           ctx.scale, _ptr(lse), _ptr(gr), _ptr(gt), _ptr(delta), _ptr(dq), _ptr(dk), _ptr(dv), _ptr(d_bias),
           torch.get_num_threads())
        dtype, bias_dtype = ctx.dtypes
        grads = (_unrows(x, ctx.shape, dtype, plan.inverse) for x in (dq, dk, dv))
        return (*grads, None if d_bias is None else d_bias.to(bias_dtype), None, None)


def na_native(query: Tensor, key: Tensor, value: Tensor, axes: tuple[AxisSpec, ...], rpb: Tensor | None,
              scale: float) -> Tensor:
    """Neighbourhood attention with the compiled CPU kernel (requires :func:`library`).

    Args:
        query, key, value: ``[B, *spatial, heads, head_dim]`` CPU tensors.
        axes: one :class:`AxisSpec` per spatial axis.
        rpb: ``[heads, 2k_1 - 1, ..., 2k_n - 1]`` or ``None``.
        scale: logit scale.

    Returns:
        ``[B, *spatial, heads, head_dim]``; queries without any valid key get zeros.
    """
    return _NativeNA.apply(query, key, value, rpb, axes, scale)
