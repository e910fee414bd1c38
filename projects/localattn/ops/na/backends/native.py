"""Compiled CPU kernel of the ``tiled`` backend: exact per-query neighbour loops in C++.

The loops visit exactly ``prod(k)`` keys per query (the pure-torch tiles compute ``prod(T + k - 1)``
scores per query), so on CPU this is the fast path. Each window row of keys is contiguous along the
last axis (dilation groups are made contiguous there first), so scores are computed ``8`` keys at a
time from a transposed copy of K (``[B, heads, C, N]``), in vector registers.

It needs nothing but a C++ compiler: the source below is built once with ``$CXX`` (else
``g++``/``c++``) and ``-O3 -march=native``, cached under ``$LOCALATTN_CACHE_DIR`` (default
``~/.cache/localattn``) keyed by a hash of source, compiler, flags and CPU, and loaded with ``ctypes``
(no torch headers, builds in seconds). Without a compiler, when the build fails, or with
``LOCALATTN_NA_NATIVE=0``, :func:`library` returns ``None`` and the pure-torch tiles are used instead.

The kernels are the custom ops ``localattn::na_cpu_forward`` / ``na_cpu_backward`` (``torch.library``,
with fake implementations and autograd), so ``torch.compile`` keeps them whole. The forward reads q and
v with their strides (slices of a fused qkv projection are not copied) and, when a gradient is needed,
saves the log-sum-exp and the ``prod(k)`` neighbour probabilities per (query, head) (scalars, no
copies of K/V); backward computes ``dP = dO . V`` per query, then ``dq`` and the RPB gradient, and
scatters ``dk``/``dv`` when every thread owns whole (batch, head) slices; otherwise ``dk``/``dv`` come
from a second pass per key over the queries whose window holds it (probabilities recomputed from the
log-sum-exp). No races, no atomics. fp16/bf16 run in fp32 (inputs upcast), fp64 in fp64.
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
from torch import Tensor

from ...caching import table_cache
from ..indexing import AxisSpec, axis_inverse, axis_windows

PAD = 8  # zero columns after each transposed row (one vector step)
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-shared', '-fPIC', '-std=c++17', '-pthread')

SOURCE = r'''
// Exact neighbourhood attention on CPU, one (batch, head, position) at a time.
// Row tensors [B, N, H, C] (N positions, row-major over 3 axes); per-row statistics [B, N, H];
// transposed tensors [B, H, C, NP] (NP >= N + V) so that a run of neighbours contiguous along the
// last axis becomes a run of vector lanes for every channel.
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

struct Geometry {
  int64_t BH, H, N, NP, C, L[3], d[3], K[3], W[3], Lmax, R, M, PM;  // M: scratch, PM: probs per query
  int64_t qs[3], vs[3];  // forward only: (batch, position, head) strides of q and v (channels contiguous)
  const int64_t* tab;
  // Offsets of slice bh = b * H + h: rows (stride H * C per position), statistics (stride H), columns.
  int64_t rows(int64_t bh) const { return (bh / H) * N * H * C + (bh % H) * C; }
  int64_t stats(int64_t bh) const { return (bh / H) * N * H + bh % H; }
  int64_t cols(int64_t bh) const { return bh * C * NP; }
  int64_t qrow(int64_t bh, int64_t n) const { return (bh / H) * qs[0] + n * qs[1] + (bh % H) * qs[2]; }
  int64_t vrows(int64_t bh) const { return (bh / H) * vs[0] + (bh % H) * vs[2]; }
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

template <typename T>
struct Vec {  // V lanes of T (GCC/Clang vector extension)
  typedef T type __attribute__((vector_size(V * sizeof(T))));
};
template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// exp on V floats at once (Cephes-style polynomial, ~2 ulp on [-87, 88]); std::exp for doubles.
inline Vec<float>::type exp_v(Vec<float>::type x) {
  typedef int32_t I __attribute__((vector_size(V * sizeof(int32_t))));
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const Vec<float>::type n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  Vec<float>::type y = x * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  Vec<float>::type scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
// x[j] = exp(x[j]) for j < m; the buffer holds at least m rounded up to V entries.
inline void exp_inplace(float* x, int64_t m) {
  for (int64_t j = 0; j < m; j += V) {
    const Vec<float>::type e = exp_v(load(x + j));
    std::memcpy(x + j, &e, sizeof(e));
  }
}
inline void exp_inplace(double* x, int64_t m) {
  for (int64_t j = 0; j < m; ++j) x[j] = std::exp(x[j]);
}

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

// Dot products of NG segments: lane l of segment i gets sum_c a[c] * bt[c * NP + base_i + l] (in s)
// and, when TWO, sum_c a2[c] * b2t[...] (in p); valid lanes are appended at entry m with their
// position (idx) and RPB index (rel). Returns the new entry count.
template <typename T, bool TWO, int NG>
inline int64_t dot_group(const Geometry& g, const Segment* seg, const T* a, const T* bt, const T* a2, const T* b2t,
                         T* s, T* p, int64_t* idx, int64_t* rel, int64_t m) {
  typename Vec<T>::type acc[NG] = {}, acc2[NG] = {};
  for (int64_t c = 0; c < g.C; ++c) {
    const T *b = bt + c * g.NP, *b2 = TWO ? b2t + c * g.NP : nullptr;
    for (int i = 0; i < NG; ++i) acc[i] += a[c] * load(b + seg[i].base);
    if (TWO)
      for (int i = 0; i < NG; ++i) acc2[i] += a2[c] * load(b2 + seg[i].base);
  }
  for (int i = 0; i < NG; ++i)
    for (int64_t l = 0; l < seg[i].len; ++l, ++m) {
      s[m] = acc[i][l];
      if (TWO) p[m] = acc2[i][l];
      idx[m] = seg[i].base + l;
      rel[m] = seg[i].rel + seg[i].step * l;
    }
  return m;
}

// dot_group over all ns segments, G at a time.
template <typename T, bool TWO>
int64_t segment_dots(const Geometry& g, const Segment* seg, int64_t ns, const T* a, const T* bt, const T* a2,
                     const T* b2t, T* s, T* p, int64_t* idx, int64_t* rel) {
  int64_t m = 0, s0 = 0;
  for (; s0 + G <= ns; s0 += G) m = dot_group<T, TWO, G>(g, seg + s0, a, bt, a2, b2t, s, p, idx, rel, m);
  switch (ns - s0) {
    case 3: return dot_group<T, TWO, 3>(g, seg + s0, a, bt, a2, b2t, s, p, idx, rel, m);
    case 2: return dot_group<T, TWO, 2>(g, seg + s0, a, bt, a2, b2t, s, p, idx, rel, m);
    case 1: return dot_group<T, TWO, 1>(g, seg + s0, a, bt, a2, b2t, s, p, idx, rel, m);
    default: return m;
  }
}

// out[c0 + c] = sum_j w[j] * X[idx[j] * stride + c0 + c] for c < NV * V, accumulated in registers.
template <typename T, int NV>
inline void weighted_chunk(const T* w, const int64_t* idx, int64_t m, const T* X, int64_t stride, int64_t c0, T* out) {
  typename Vec<T>::type acc0[NV] = {}, acc1[NV] = {};
  int64_t j = 0;
  for (; j + 1 < m; j += 2) {
    const T *x0 = X + idx[j] * stride + c0, *x1 = X + idx[j + 1] * stride + c0;
    for (int v = 0; v < NV; ++v) acc0[v] += w[j] * load(x0 + v * V), acc1[v] += w[j + 1] * load(x1 + v * V);
  }
  if (j < m)
    for (int v = 0; v < NV; ++v) acc0[v] += w[j] * load(X + idx[j] * stride + c0 + v * V);
  for (int v = 0; v < NV; ++v) {
    const typename Vec<T>::type sum = acc0[v] + acc1[v];
    std::memcpy(out + c0 + v * V, &sum, sizeof(sum));
  }
}

// out[c] = sum_j w[j] * X[idx[j] * stride + c] for c < C.
template <typename T>
void weighted_rows(const T* w, const int64_t* idx, int64_t m, const T* X, int64_t stride, int64_t C, T* out) {
  int64_t c0 = 0;
  for (; c0 + 4 * V <= C; c0 += 4 * V) weighted_chunk<T, 4>(w, idx, m, X, stride, c0, out);
  for (; c0 + V <= C; c0 += V) weighted_chunk<T, 1>(w, idx, m, X, stride, c0, out);
  for (; c0 < C; ++c0) {
    T sum = 0;
    for (int64_t j = 0; j < m; ++j) sum += w[j] * X[idx[j] * stride + c0];
    out[c0] = sum;
  }
}

// Y[idx[j] * stride + c] += w[j] * x[c] for c < C.
template <typename T>
void scatter_rows(const T* __restrict w, const int64_t* __restrict idx, int64_t m, const T* __restrict x,
                  T* __restrict Y, int64_t stride, int64_t C) {
  for (int64_t j = 0; j < m; ++j) {
    const T wj = w[j];
    T* __restrict y = Y + idx[j] * stride;
    int64_t c = 0;
    for (; c + V <= C; c += V) {
      const typename Vec<T>::type sum = load(y + c) + wj * load(x + c);
      std::memcpy(y + c, &sum, sizeof(sum));
    }
    for (; c < C; ++c) y[c] += wj * x[c];
  }
}

template <typename T>
struct Scratch {
  std::vector<Segment> seg;
  std::vector<T> s, p, w;
  std::vector<int64_t> idx, rel;
  explicit Scratch(int64_t m) : seg(m), s(m + V), p(m + V), w(m + V), idx(m), rel(m) {}  // exp runs by V
};

template <typename T>
struct Tensors {  // row tensors [B, N, H, C], statistics [B, N, H], transposed [B, H, C, NP]
  const T *q, *k, *v, *rpb, *qt, *kt, *vt, *dout, *gt, *lse, *delta, *probs;
  T *out, *lse_out, *probs_out, *dq, *dk, *dv;
  T scale;
};

template <typename T>
void forward(const Geometry& g, const Tensors<T>& t, int threads) {
  const int64_t stride = g.H * g.C;
  parallel_for(g.BH * g.N, threads, [&](int, int64_t lo, int64_t hi) {
    Scratch<T> sc(g.M);
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bh = u / g.N, n = u % g.N, row = g.rows(bh) + n * stride;
      const int64_t ns = key_segments(g, n, sc.seg.data());
      const int64_t m = segment_dots<T, false>(g, sc.seg.data(), ns, t.q + g.qrow(bh, n), t.kt + g.cols(bh), nullptr,
                                               nullptr, sc.s.data(), nullptr, sc.idx.data(), sc.rel.data());
      T* s = sc.s.data();
      const T* bias = t.rpb ? t.rpb + (bh % g.H) * g.R : nullptr;
      T mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < m; ++j) s[j] = s[j] * t.scale + (bias ? bias[sc.rel[j]] : T(0)), mx = std::max(mx, s[j]);
      for (int64_t j = 0; j < m; ++j) s[j] -= mx;
      exp_inplace(s, m);
      for (int64_t j = 0; j < m; ++j) sum += s[j];
      for (int64_t j = 0; j < m; ++j) s[j] /= sum;
      if (t.lse_out) t.lse_out[g.stats(bh) + n * g.H] = m ? mx + std::log(sum) : T(INFINITY);
      if (t.probs_out) std::copy(s, s + m, t.probs_out + u * g.PM), std::fill(t.probs_out + u * g.PM + m, t.probs_out + (u + 1) * g.PM, T(0));
      weighted_rows(s, sc.idx.data(), m, t.v + g.vrows(bh), g.vs[1], g.C, t.out + row);
    }
  });
}

// Backward over each query's window (saved probabilities): dq, the RPB gradient and, when `fused`
// (threads own whole (batch, head) slices), dk and dv by scattering; otherwise dk/dv come from
// backward_key.
template <typename T>
void backward_query(const Geometry& g, const Tensors<T>& t, T* drpb, bool fused, int threads) {
  const int64_t stride = g.H * g.C;
  std::vector<std::vector<T>> part(threads, std::vector<T>(drpb ? g.H * g.R : 0, T(0)));
  const int64_t units = fused ? g.BH : g.BH * g.N;
  parallel_for(units, threads, [&](int thread, int64_t lo, int64_t hi) {
    Scratch<T> sc(g.M);
    for (int64_t u = fused ? lo * g.N : lo; u < (fused ? hi * g.N : hi); ++u) {
      const int64_t bh = u / g.N, n = u % g.N, row = g.rows(bh) + n * stride, stat = g.stats(bh) + n * g.H;
      const int64_t ns = key_segments(g, n, sc.seg.data());
      const int64_t m = segment_dots<T, false>(g, sc.seg.data(), ns, t.dout + row, t.vt + g.cols(bh), nullptr,
                                               nullptr, sc.p.data(), nullptr, sc.idx.data(), sc.rel.data());
      const T* prob = t.probs + u * g.PM;
      for (int64_t j = 0; j < m; ++j) sc.s[j] = prob[j], sc.w[j] = prob[j] * (sc.p[j] - t.delta[stat]);
      if (drpb) {
        T* db = part[thread].data() + (bh % g.H) * g.R;
        for (int64_t j = 0; j < m; ++j) db[sc.rel[j]] += sc.w[j];
      }
      for (int64_t j = 0; j < m; ++j) sc.w[j] *= t.scale;
      weighted_rows(sc.w.data(), sc.idx.data(), m, t.k + g.rows(bh), stride, g.C, t.dq + row);
      if (fused) {
        scatter_rows(sc.w.data(), sc.idx.data(), m, t.q + row, t.dk + g.rows(bh), stride, g.C);
        scatter_rows(sc.s.data(), sc.idx.data(), m, t.dout + row, t.dv + g.rows(bh), stride, g.C);
      }
    }
  });
  if (drpb)
    for (int64_t i = 0; i < g.H * g.R; ++i) {
      T total = 0;
      for (int th = 0; th < threads; ++th) total += part[th][i];
      drpb[i] = total;
    }
}

// dk and dv, visiting the queries whose window holds each key.
template <typename T>
void backward_key(const Geometry& g, const Tensors<T>& t, int threads) {
  const int64_t stride = g.H * g.C;
  parallel_for(g.BH * g.N, threads, [&](int, int64_t lo, int64_t hi) {
    Scratch<T> sc(g.M);
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bh = u / g.N, n = u % g.N, row = g.rows(bh) + n * stride, stats = g.stats(bh);
      const int64_t ns = query_segments(g, n, sc.seg.data());
      const int64_t m = segment_dots<T, true>(g, sc.seg.data(), ns, t.k + row, t.qt + g.cols(bh), t.v + row,
                                              t.gt + g.cols(bh), sc.s.data(), sc.p.data(), sc.idx.data(),
                                              sc.rel.data());
      const T* bias = t.rpb ? t.rpb + (bh % g.H) * g.R : nullptr;
      T *s = sc.s.data(), *dp = sc.p.data(), *w = sc.w.data();
      for (int64_t j = 0; j < m; ++j)
        s[j] = s[j] * t.scale + (bias ? bias[sc.rel[j]] : T(0)) - t.lse[stats + sc.idx[j] * g.H];
      exp_inplace(s, m);  // P
      for (int64_t j = 0; j < m; ++j) w[j] = s[j] * (dp[j] - t.delta[stats + sc.idx[j] * g.H]);  // dS
      for (int64_t j = 0; j < m; ++j) sc.w[j] *= t.scale;
      weighted_rows(sc.w.data(), sc.idx.data(), m, t.q + g.rows(bh), stride, g.C, t.dk + row);
      weighted_rows(sc.s.data(), sc.idx.data(), m, t.dout + g.rows(bh), stride, g.C, t.dv + row);
    }
  });
}

Geometry make_geometry(const int64_t* meta, const int64_t* tab) {
  // meta: BH, H, N, NP, C, L[3], d[3], K[3], Lmax, most neighbours per position, q strides[3], v strides[3]
  Geometry g;
  g.BH = meta[0], g.H = meta[1], g.N = meta[2], g.NP = meta[3], g.C = meta[4];
  for (int a = 0; a < 3; ++a)
    g.L[a] = meta[5 + a], g.d[a] = meta[8 + a], g.K[a] = meta[11 + a], g.W[a] = 2 * g.K[a] - 1;
  g.Lmax = meta[14], g.M = meta[15] + G, g.PM = g.K[0] * g.K[1] * g.K[2], g.R = g.W[0] * g.W[1] * g.W[2], g.tab = tab;
  for (int a = 0; a < 3; ++a) g.qs[a] = meta[16 + a], g.vs[a] = meta[19 + a];
  return g;
}

}  // namespace

// Forward: out [B, N, H, C], lse [B, N, H] and the neighbour probabilities probs [B, H, N, PM]
// (PM = prod(K); lse and probs may be null: inference) from q, v [B, N, H, C] (any batch, position and
// head strides, channels contiguous) and kt [B, H, C, NP].
// Backward: dq, dk, dv [B, N, H, C] and drpb (when rpb is given). With qt and gt (transposed q and
// dout) dk/dv are computed per key; with qt == gt == null, dk/dv must be zero-initialised and threads
// owning whole (batch, head) slices scatter into them.
#define NA_EXPORT(T, SUFFIX)                                                                                  \
  extern "C" void na_forward_##SUFFIX(const int64_t* meta, const int64_t* tab, const T* q, const T* kt,        \
                                      const T* v, const T* rpb, double scale, T* out, T* lse, T* probs,        \
                                      int threads) {                                                          \
    Tensors<T> t{};                                                                                           \
    t.q = q, t.kt = kt, t.v = v, t.rpb = rpb, t.out = out, t.lse_out = lse, t.probs_out = probs;              \
    t.scale = T(scale);                                                                                       \
    forward<T>(make_geometry(meta, tab), t, threads);                                                         \
  }                                                                                                           \
  extern "C" void na_backward_##SUFFIX(const int64_t* meta, const int64_t* tab, const T* q, const T* qt,       \
                                       const T* k, const T* kt, const T* v, const T* vt, const T* rpb,         \
                                       double scale, const T* lse, const T* probs, const T* dout, const T* gt,  \
                                       const T* delta, T* dq, T* dk, T* dv, T* drpb, int threads) {            \
    const Geometry g = make_geometry(meta, tab);                                                              \
    Tensors<T> t{};                                                                                           \
    t.q = q, t.qt = qt, t.k = k, t.kt = kt, t.v = v, t.vt = vt, t.rpb = rpb, t.lse = lse, t.probs = probs;    \
    t.dout = dout;                                                                                            \
    t.gt = gt, t.delta = delta, t.dq = dq, t.dk = dk, t.dv = dv, t.scale = T(scale);                          \
    const bool fused = qt == nullptr;                                                                         \
    backward_query<T>(g, t, drpb, fused, threads);                                                            \
    if (!fused) backward_key<T>(g, t, threads);                                                               \
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
        getattr(lib, f'na_forward_{suffix}').argtypes = [ptr] * 6 + [f64] + [ptr] * 3 + [i32]
        getattr(lib, f'na_backward_{suffix}').argtypes = [ptr] * 9 + [f64] + [ptr] * 9 + [i32]
    return lib


class _Plan(NamedTuple):
    meta: tuple[int, ...]  # L[3], d[3], K[3], Lmax, max neighbours of the axes padded to 3-D
    tab: Tensor  # [3, 5, Lmax] int64 window / inverse-window tables
    perm: Tensor | None  # new -> old position along the last axis (dilation groups made contiguous)
    inverse: Tensor | None  # old -> new position


@table_cache(maxsize=64)
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


def geometry(axes: tuple[AxisSpec, ...]) -> list[int]:
    """``axes`` as a flat int list (the custom ops' argument): 6 ints per axis."""
    return [v for ax in axes for v in (ax.length, ax.kernel, ax.dilation, ax.stride, int(ax.causal), ax.valid or 0)]


def _axes(geom: list[int]) -> tuple[AxisSpec, ...]:
    """Inverse of :func:`geometry`."""
    return tuple(AxisSpec(L, k, d, s, bool(c), v or None) for L, k, d, s, c, v in
                 (geom[i:i + 6] for i in range(0, len(geom), 6)))


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(x: Tensor, perm: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[B, *spatial, H, C]`` -> contiguous ``[B, N, H, C]`` in ``dtype``, last axis reordered by ``perm``."""
    if perm is not None:
        x = x.index_select(x.dim() - 3, perm)
    return x.to(dtype).contiguous().view(x.shape[0], -1, *x.shape[-2:])


def _strided_rows(x: Tensor, perm: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Like :func:`_rows` but without a copy when ``x`` already is ``[B, N, H, C]`` rows with contiguous
    channels in ``dtype`` (e.g. ``q``/``v`` sliced out of a fused qkv projection); strides are free."""
    if perm is None and x.dtype == dtype:
        rows = x.reshape(x.shape[0], -1, *x.shape[-2:])
        if rows.stride(-1) == 1:
            return rows
    return _rows(x, perm, dtype)


def _columns(rows: Tensor) -> Tensor:
    """``[B, N, H, C]`` (any strides) -> ``[B, H, C, N + PAD]``; the zero tail lets vector steps read past a
    row end."""
    b, n, h, c = rows.shape
    cols = rows.new_empty(b, h, c, n + PAD)
    cols[..., n:] = 0
    cols[..., :n] = rows.permute(0, 2, 3, 1)
    return cols


def _unrows(rows: Tensor, shape: torch.Size, dtype: torch.dtype, inverse: Tensor | None) -> Tensor:
    """Inverse of :func:`_rows`: ``[B, N, H, C]`` (any strides) -> ``shape`` ``[B, *spatial, H, C]`` in ``dtype``."""
    x = rows.reshape(shape)
    if inverse is not None:
        x = x.index_select(x.dim() - 3, inverse)
    return x.to(dtype)


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _meta(rows: Tensor, plan: _Plan, q: Tensor | None = None, v: Tensor | None = None) -> Tensor:
    """Kernel geometry of ``[B, N, H, C]`` rows; ``q``/``v``: the forward's (strided) row views."""
    b, n, h, c = rows.shape
    strides = [x.stride()[:3] if x is not None else (n * h * c, h * c, c) for x in (q, v)]
    return torch.tensor((b * h, h, n, n + PAD, c, *plan.meta, *strides[0], *strides[1]), dtype=torch.long)


# The kernels are registered as custom ops: opaque to torch.compile (no graph break, shapes from the
# fake implementations) and differentiable through ``register_autograd``.
@torch.library.custom_op('localattn::na_cpu_forward', mutates_args=(), device_types='cpu')
def na_cpu_forward(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, geom: list[int], scale: float,
                   with_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Forward kernel. ``[B, *spatial, H, C]`` x3 -> ``(out, lse [B, N, H], probs [B, H, N, prod(k)])``.

    ``lse``/``probs`` (compute dtype) are the backward's statistics; empty without ``with_stats``.
    """
    dtype, plan = _compute_dtype(query), _plan(_axes(geom))
    q, v = (_strided_rows(x, plan.perm, dtype) for x in (query, value))
    kt = _columns(_strided_rows(key, plan.perm, dtype))
    bias = None if rpb is None else rpb.detach().to(dtype).contiguous()
    b, n, h, c = q.shape
    out = q.new_empty(b, n, h, c)
    lse = q.new_empty((b, n, h) if with_stats else (0, ))
    probs = q.new_empty((b, h, n, math.prod(plan.meta[6:9])) if with_stats else (0, ))
    meta = _meta(q, plan, q, v)  # every array passed below must stay referenced during the call
    lib = library()
    fn = lib.na_forward_f64 if dtype == torch.float64 else lib.na_forward_f32
    fn(_ptr(meta), _ptr(plan.tab), _ptr(q), _ptr(kt), _ptr(v), _ptr(bias), scale, _ptr(out),
       _ptr(lse) if with_stats else None, _ptr(probs) if with_stats else None, torch.get_num_threads())
    return _unrows(out, query.shape, query.dtype, plan.inverse), lse, probs


@na_cpu_forward.register_fake
def _(query, key, value, rpb, geom, scale, with_stats):
    dtype, axes = _compute_dtype(query), _axes(geom)
    b, h = query.shape[0], query.shape[-2]
    n = math.prod(ax.length for ax in axes)
    if not with_stats:
        return torch.empty_like(query), query.new_empty(0, dtype=dtype), query.new_empty(0, dtype=dtype)
    return (torch.empty_like(query), query.new_empty(b, n, h, dtype=dtype),
            query.new_empty(b, h, n, math.prod(ax.kernel for ax in axes), dtype=dtype))


@torch.library.custom_op('localattn::na_cpu_backward', mutates_args=(), device_types='cpu')
def na_cpu_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, out: Tensor,
                    lse: Tensor, probs: Tensor, geom: list[int], scale: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward kernel: ``(dq, dk, dv, drpb)``; ``drpb`` is empty when ``rpb`` is None."""
    if probs.numel() == 0 and lse.numel() == 0 and grad_out.numel():
        raise RuntimeError('localattn: NA backward without the forward statistics (forward ran without grad)')
    dtype, plan, threads = _compute_dtype(query), _plan(_axes(geom)), torch.get_num_threads()
    q, k, v, grad, o = (_rows(x, plan.perm, dtype) for x in (query, key, value, grad_out, out))
    delta = (grad * o).sum(-1)
    bias = None if rpb is None else rpb.detach().to(dtype).contiguous()
    dq = torch.empty_like(q)
    d_bias = None if bias is None else torch.empty_like(bias)
    if q.shape[0] * q.shape[2] >= threads:  # threads own whole (batch, head) slices: scatter dk, dv
        qt = gt = None
        dk, dv = torch.zeros_like(q), torch.zeros_like(q)
    else:  # a second pass per key over the queries whose window holds it
        qt, gt = _columns(q), _columns(grad)
        dk, dv = torch.empty_like(q), torch.empty_like(q)
    kt, vt = _columns(k), _columns(v)  # the kernel reads every array below while these references keep them alive
    meta = _meta(q, plan)
    lib = library()
    fn = lib.na_backward_f64 if dtype == torch.float64 else lib.na_backward_f32
    fn(_ptr(meta), _ptr(plan.tab), _ptr(q), _ptr(qt), _ptr(k), _ptr(kt), _ptr(v), _ptr(vt), _ptr(bias),
       scale, _ptr(lse), _ptr(probs), _ptr(grad), _ptr(gt), _ptr(delta), _ptr(dq), _ptr(dk), _ptr(dv),
       _ptr(d_bias), threads)
    grads = (_unrows(x, query.shape, query.dtype, plan.inverse) for x in (dq, dk, dv))
    return (*grads, query.new_empty(0) if d_bias is None else d_bias.to(rpb.dtype))


@na_cpu_backward.register_fake
def _(grad_out, query, key, value, rpb, out, lse, probs, geom, scale):
    return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value),
            query.new_empty(0) if rpb is None else torch.empty_like(rpb))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, rpb, geom, scale, _ = inputs
    out, lse, probs = output
    ctx.save_for_backward(query, key, value, rpb, out, lse, probs)
    ctx.geom, ctx.scale = geom, scale


def _backward(ctx, grad_out: Tensor, _grad_lse, _grad_probs):
    query, key, value, rpb, out, lse, probs = ctx.saved_tensors
    dq, dk, dv, d_rpb = na_cpu_backward(grad_out, query, key, value, rpb, out, lse, probs, ctx.geom, ctx.scale)
    return dq, dk, dv, (d_rpb if rpb is not None else None), None, None, None


na_cpu_forward.register_autograd(_backward, setup_context=_setup_context)


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
    with_stats = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                                 for x in (query, key, value, rpb))
    return na_cpu_forward(query, key, value, rpb, geometry(axes), float(scale), with_stats)[0]
