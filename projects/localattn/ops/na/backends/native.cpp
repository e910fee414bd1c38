// Compiled CPU kernel of the `native` neighbourhood-attention backend (see native.py).
// Plain C++17, no torch headers: native.py builds it into a shared library with
//   $CXX -O3 -march=native -fopenmp-simd -shared -fPIC -std=c++17 -pthread native.cpp -o na_cpu_<hash>.so
// (cached under $LOCALATTN_CACHE_DIR, default ~/.cache/localattn) and calls the extern "C" entry
// points at the end of this file through ctypes.
//
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
