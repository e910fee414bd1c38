"""Triton kernels of the ``triton`` NA backend (imported lazily by :mod:`.triton`; needs ``triton``).

The kernels see every call as 3-D, ``[B, Z, Y, X, heads, D]`` (1-D and 2-D calls arrive with unit
leading axes). Every kernel works on one dilation group at a time: with dilation ``(dz, dy, dx)``
the map splits into ``dz * dy * dx`` interleaved sub-maps (group ``(gz, gy, gx)`` holds the global
positions ``gz + dz * l``, ``gy + dy * i``, ``gx + dx * j``), and NA with dilation is plain NA inside
each sub-map. Groups are never copied: the kernels address the group's tokens through the tensors'
strides (heads-last, last dim contiguous), so slices of a fused qkv projection are read in place.

Tiles are one depth deep and 2-D boxes of the group's local rows and columns. A forward / dq program
owns a ``TQH x TQW`` query tile and walks the ``kz`` key depths of its depth window and, in each, the
key box its windows cover (at most ``TQH + k - 1`` rows of ``TQW + k - 1`` columns, since window
starts move by at most one per query step) in blocks of ``KRH`` box rows x ``KW`` columns (one flat
loop over the blocks, so the compiler can pipeline its loads); the dk/dv program owns a ``TKH x TKW``
key tile and walks the query depths whose depth windows hold it and, in each, the queries whose
windows hold those keys (inverse windows, wider at the borders) in blocks of ``QRH`` rows x ``QW``
columns. Pairs outside the exact window are masked, so every output is exact. (One depth per tile:
all queries of a tile then share their depth window and relative depths, so depth costs a loop, not
a mask, and the RPB gradient of a key depth is one plane of the table.)

Window rule (stride 1, non-causal), local index ``i`` on an axis of group length ``Lg``:
``start(i) = clamp(i - k // 2, 0, Lg - k)``; key ``j`` is in the window of queries
``first(j) .. last(j)`` with ``first(j) = 0 if j <= k - 1 else j - (k - 1 - k // 2)`` and
``last(j) = Lg - 1 if j >= Lg - k else j + k // 2`` (the same on every axis). Keys at global index
``>= valid`` on any axis are dropped.

Softmax statistics are kept in base 2: ``log2(e)`` is folded into the logit scale and the RPB table
arrives multiplied by it (the host does that once per call). The RPB gradient is accumulated per
program in registers (binned by relative offset) and written to a per-program slot of a partial
buffer that the host sums: no atomics, deterministic, race-free by construction.

The per-pair work is kept small, since with head dims of 32 it, not the dots, bounds the kernels:
the window test is two unsigned compares of a row and a column offset (a key that must not count,
past ``valid`` or outside the box, gets a row far outside every window instead of a third test),
the RPB index is one subtraction of a per-key and a per-query term, and loads of whole head dims
carry no lane mask.
"""
import triton
import triton.language as tl

_SIZES = ['Lz', 'Ly', 'Lx', 'kzk', 'kyk', 'kxk', 'dz', 'dy', 'dx', 'Vz', 'Vy', 'Vx', 'tiles_z', 'tiles_y',
          'tiles_x']


#: a local row no window reaches: keys that must not count get it (see ``_in_window``)
FAR: tl.constexpr = tl.constexpr(-(1 << 24))


@triton.jit
def _group_len(length, dil, g):
    """Number of positions of dilation group ``g`` on an axis of ``length``."""
    return (length - g + dil - 1) // dil


@triton.jit
def _window_start(i, lg, k):
    """First key (local index) of the window of local query ``i``."""
    return tl.minimum(tl.maximum(i - k // 2, 0), lg - k)


@triton.jit
def _in_window(offset, k):
    """``0 <= offset < k`` as one unsigned compare."""
    return offset.to(tl.uint32, bitcast=True) < k.to(tl.uint32)


@triton.jit
def _decode_tile(pid, tiles_z, tiles_y, tiles_x, dy, dx):
    """Program index -> dilation group ``(gz, gy, gx)`` and tile ``(tz, ty, tx)`` (x fastest)."""
    tx = pid % tiles_x
    t = pid // tiles_x
    ty = t % tiles_y
    t = t // tiles_y
    tz = t % tiles_z
    t = t // tiles_z
    gx = t % dx
    t = t // dx
    return t // dy, t % dy, gx, tz, ty, tx


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` with fp32 accumulation: exact fp32 products for fp32 inputs (``IEEE``); ``UPCAST``
    feeds fp16/bf16 operands as fp32 (the products are exact either way), which Triton's CPU
    interpreter needs for bf16."""
    if IEEE or UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision='ieee')
    return tl.dot(a, b)


@triton.jit
def _lanes(ok, d_ok, D: tl.constexpr, BD: tl.constexpr, TOKENS_LAST: tl.constexpr):
    """Mask of tokens ``ok`` x head-dim lanes for ``[N, BD]`` (``[BD, N]`` if ``TOKENS_LAST``) tiles;
    only the token part when every lane is used (the load broadcasts it)."""
    if TOKENS_LAST:
        mask = ok[None, :]
        if D != BD:
            mask = mask & d_ok[:, None]
    else:
        mask = ok[:, None]
        if D != BD:
            mask = mask & d_ok[None, :]
    return mask


@triton.jit
def _tile(pid, Lz, Ly, Lx, dz, dy, dx, tiles_z, tiles_y, tiles_x, TH: tl.constexpr, TW: tl.constexpr):
    """Where program ``pid`` works: its dilation group, the group's lengths, and the local coordinates
    of its tile (depth ``z0``, a ``TH x TW`` box of rows ``ly`` and columns ``lx``; ``inside``: the tile
    starts inside the group)."""
    gz, gy, gx, z0, ty, tx = _decode_tile(pid, tiles_z, tiles_y, tiles_x, dy, dx)
    lgz = _group_len(Lz, dz, gz)
    lgy = _group_len(Ly, dy, gy)
    lgx = _group_len(Lx, dx, gx)
    y0 = ty * TH
    x0 = tx * TW
    i = tl.arange(0, TH * TW)
    ly = y0 + i // TW
    lx = x0 + i % TW
    return (gz, gy, gx, lgz, lgy, lgx, z0, y0, x0, ly, lx, (ly < lgy) & (lx < lgx),
            (z0 < lgz) & (y0 < lgy) & (x0 < lgx))


@triton.jit
def _query_tile(Q, q_base, sqy, sqx, gy, gx, dy, dx, qy, qx, q_ok, lgy, lgx, kyk, kxk,
                D: tl.constexpr, BD: tl.constexpr):
    """A query tile's window starts, RPB index term, head-dim lanes, global coordinates, load mask and
    queries ``[BQ, BD]``. Queries outside the map take the window and RPB index of the map's last row /
    column (so every RPB index that passes the window test lies in the table); they are never stored."""
    d = tl.arange(0, BD)
    d_ok = d < D
    gq_y = gy + dy * qy
    gq_x = gx + dx * qx
    qmask = _lanes(q_ok, d_ok, D, BD, False)
    q = tl.load(Q + q_base + (gq_y * sqy + gq_x * sqx)[:, None] + d[None, :], mask=qmask, other=0.)
    cy = tl.minimum(qy, lgy - 1)
    cx = tl.minimum(qx, lgx - 1)
    return (_window_start(cy, lgy, kyk), _window_start(cx, lgx, kxk), cy * (2 * kxk - 1) + cx,
            d, d_ok, gq_y, gq_x, qmask, q)


@triton.jit
def _key_box(y0, x0, lgy, lgx, kyk, kxk, TQH: tl.constexpr, TQW: tl.constexpr):
    """Rows ``[r_lo, r_hi)`` and columns ``[c_lo, c_hi)`` of the keys a query tile's windows cover."""
    r_lo = _window_start(y0, lgy, kyk)
    r_hi = _window_start(tl.minimum(y0 + TQH, lgy) - 1, lgy, kyk) + kyk
    c_lo = _window_start(x0, lgx, kxk)
    c_hi = _window_start(tl.minimum(x0 + TQW, lgx) - 1, lgx, kxk) + kxk
    return r_lo, r_hi, c_lo, c_hi


@triton.jit
def _box_steps(lo_r, hi_r, lo_c, hi_c, RH: tl.constexpr, CW: tl.constexpr):
    """Blocks of ``RH x CW`` covering rows ``[lo_r, hi_r)`` x columns ``[lo_c, hi_c)``: (block rows,
    block columns)."""
    return tl.cdiv(hi_r - lo_r, RH), tl.cdiv(hi_c - lo_c, CW)


@triton.jit
def _next(zi, ri, ci, n_r, n_c, DEPTH: tl.constexpr):
    """The block after ``(depth zi, block row ri, block column ci)`` of a walk over ``n_r x n_c`` blocks
    per depth. The kernels walk depths x blocks in one flat loop and carry these counters (no integer
    division per step; one loop, which the compiler pipelines and keeps in fewer registers than nested
    loops). Without ``DEPTH`` (1-D and 2-D calls) there is one depth and ``zi`` stays 0."""
    ci += 1
    wrap_c = ci == n_c
    ci = tl.where(wrap_c, 0, ci)
    ri = tl.where(wrap_c, ri + 1, ri)
    if DEPTH:
        wrap_r = ri == n_r
        zi = tl.where(wrap_r, zi + 1, zi)
        ri = tl.where(wrap_r, 0, ri)
    return zi, ri, ci


@triton.jit
def _first_block(n_c):
    """``(depth, block row, block column)`` counters of a walk's first block (run-time zeros)."""
    zero = n_c * 0
    return zero, zero, zero


@triton.jit
def _depth(zi, z_lo, z_q, z_k, gz, dz, h, kzk, Vz, Vy, rpb_plane, DEPTH: tl.constexpr):
    """Depth ``z_lo + zi`` of a loop over depths: its global index, the offset of its RPB plane for head
    ``h`` (relative depth ``z_k - z_q``, with ``z_k`` or ``z_q`` being this depth), and the row bound of
    valid keys (``Vy``, or 0 when the depth is a key depth past ``Vz``). Without ``DEPTH``: depth 0 and
    head ``h``'s table, so 1-D and 2-D calls compile to the loops of a 2-D kernel."""
    if DEPTH:
        g = gz + dz * (z_lo + zi)
        plane = (h * (2 * kzk - 1) + z_k - z_q + kzk - 1) * rpb_plane
        vy = tl.where(g < Vz, Vy, 0)
    else:
        g = 0
        plane = h * rpb_plane
        vy = Vy
    return g, plane, vy


@triton.jit
def _block(ri, ci, lo_r, lo_c, hi_r, hi_c, RH: tl.constexpr, CW: tl.constexpr):
    """Local rows and columns ``[RH * CW]`` of block ``(ri, ci)`` and whether each lies inside the box."""
    i = tl.arange(0, RH * CW)
    r = lo_r + ri * RH + i // CW
    c = lo_c + ci * CW + i % CW
    return r, c, (r < hi_r) & (c < hi_c)


@triton.jit
def _key_block(K, k_base, sky, skx, gy, gx, dy, dx, ri, ci, r_lo, c_lo, r_hi, c_hi, Vy, Vx, kyk, kxk,
               d, d_ok, D: tl.constexpr, BD: tl.constexpr, RH: tl.constexpr, KW: tl.constexpr):
    """Keys of block ``(ri, ci)`` of the key box (one key depth: ``k_base`` holds its offset; ``Vy`` is
    0 for a depth past ``valid``): local rows (``FAR`` for keys that must not count) and columns,
    validity, the RPB index term, the keys as ``[BD, RH * KW]``, and their global coordinates (for
    loading values the same way)."""
    kr, kc, k_in = _block(ri, ci, r_lo, c_lo, r_hi, c_hi, RH, KW)
    yk = gy + dy * kr
    xk = gx + dx * kc
    k_ok = k_in & (xk < Vx) & (yk < Vy)
    kt = tl.load(K + k_base + (yk * sky + xk * skx)[None, :] + d[:, None], mask=_lanes(k_ok, d_ok, D, BD, True),
                 other=0.)
    kbias = (kr + kyk - 1) * (2 * kxk - 1) + kc + kxk - 1
    return tl.where(k_ok, kr, FAR), kc, k_ok, kbias, kt, yk, xk


@triton.jit
def _logits(q, kt, kr, kc, kbias, sy, sx, qbias, kyk, kxk, rpb_h, scale2,
            HAS_RPB: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Base-2 logits ``[BQ, BK]`` of a query tile against one key block (RPB added) and the window mask."""
    inwin = _in_window(kr[None, :] - sy[:, None], kyk) & _in_window(kc[None, :] - sx[:, None], kxk)
    s = _dot(q, kt, IEEE, UPCAST)
    if HAS_RPB:
        s = s * scale2 + tl.load(rpb_h + (kbias[None, :] - qbias[:, None]))
    else:
        s = s * scale2
    return s, inwin


@triton.jit
def _query_side(Q, q_base, sqz, sqy, sqx, gz, gy, gx, dz, dy, dx, qz, y0, x0, qy, qx, q_ok, lgz, lgy, lgx,
                kzk, kyk, kxk, D: tl.constexpr, BD: tl.constexpr, TQH: tl.constexpr, TQW: tl.constexpr,
                KRH: tl.constexpr, KW: tl.constexpr):
    """What a forward / dq program walks from: its query tile (global depth, window starts, RPB index
    term, lanes, global rows / columns, load mask, queries), the key box its windows cover and its
    ``n_r x n_c`` blocks, the RPB plane size and the first key depth of the depth window."""
    gq_z = gz + dz * qz
    sy, sx, qbias, d, d_ok, gq_y, gq_x, qmask, q = _query_tile(Q, q_base + gq_z * sqz, sqy, sqx, gy, gx, dy, dx,
                                                               qy, qx, q_ok, lgy, lgx, kyk, kxk, D, BD)
    r_lo, r_hi, c_lo, c_hi = _key_box(y0, x0, lgy, lgx, kyk, kxk, TQH, TQW)
    n_r, n_c = _box_steps(r_lo, r_hi, c_lo, c_hi, KRH, KW)
    return (gq_z, sy, sx, qbias, d, d_ok, gq_y, gq_x, qmask, q, r_lo, r_hi, c_lo, c_hi, n_r, n_c,
            (2 * kyk - 1) * (2 * kxk - 1), _window_start(qz, lgz, kzk))


@triton.jit
def _key_step(q, sy, sx, qbias, qz, z_lo, zi, ri, ci, r_lo, c_lo, r_hi, c_hi, K, k_base, skz, sky, skx, RPB, h,
              gz, gy, gx, dz, dy, dx, Vz, Vy, Vx, kzk, kyk, kxk, rpb_plane, scale2, d, d_ok,
              D: tl.constexpr, BD: tl.constexpr, KRH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr,
              IEEE: tl.constexpr, UPCAST: tl.constexpr, DEPTH: tl.constexpr):
    """One step of the forward / dq loops: the keys of block ``(ri, ci)`` at key depth ``z_lo + zi``
    (``k_base``: the (batch, head) offset into ``K``) and the query tile's base-2 logits against them
    with the window mask. Returns the logits, the mask, the keys' validity and ``[BD, N]`` keys, and
    their global depth, rows and columns (for loading values the same way)."""
    gk_z, plane, vy = _depth(zi, z_lo, qz, z_lo + zi, gz, dz, h, kzk, Vz, Vy, rpb_plane, DEPTH)
    kr, kc, k_ok, kbias, kt, yk, xk = _key_block(K, k_base + gk_z * skz, sky, skx, gy, gx, dy, dx, ri, ci, r_lo,
                                                 c_lo, r_hi, c_hi, vy, Vx, kyk, kxk, d, d_ok, D, BD, KRH, KW)
    s, inwin = _logits(q, kt, kr, kc, kbias, sy, sx, qbias, kyk, kxk, RPB + plane, scale2, HAS_RPB, IEEE, UPCAST)
    return s, inwin, k_ok, kt, gk_z, yk, xk


@triton.jit(do_not_specialize=_SIZES)
def na_fwd_kernel(Q, K, V, Out, LSE, RPB,
                  sqb, sqz, sqy, sqx, sqh, skb, skz, sky, skx, skh, svb, svz, svy, svx, svh,
                  sob, soz, soy, sox, soh,
                  heads, Lz, Ly, Lx, kzk, kyk, kxk, dz, dy, dx, Vz, Vy, Vx, tiles_z, tiles_y, tiles_x, scale2,
                  D: tl.constexpr, BD: tl.constexpr, TQH: tl.constexpr, TQW: tl.constexpr,
                  KRH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr, IEEE: tl.constexpr,
                  UPCAST: tl.constexpr, DEPTH: tl.constexpr):
    """Forward: one program = one query tile (one depth) of one dilation group, one (head, batch).

    The query tile's windows share one depth window, so the key box is walked one key depth at a
    time (``kzk`` depths; one for 1-D and 2-D), each in blocks of ``KRH`` rows x ``KW`` columns.
    """
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    gz, gy, gx, lgz, lgy, lgx, qz, y0, x0, qy, qx, q_ok, inside = _tile(
        tl.program_id(0), Lz, Ly, Lx, dz, dy, dx, tiles_z, tiles_y, tiles_x, TQH, TQW)
    if inside:
        BQ: tl.constexpr = TQH * TQW
        gq_z, sy, sx, qbias, d, d_ok, gq_y, gq_x, qmask, q, r_lo, r_hi, c_lo, c_hi, n_r, n_c, rpb_plane, z_lo = \
            _query_side(Q, b * sqb + h * sqh, sqz, sqy, sqx, gz, gy, gx, dz, dy, dx, qz, y0, x0, qy, qx, q_ok,
                        lgz, lgy, lgx, kzk, kyk, kxk, D, BD, TQH, TQW, KRH, KW)
        m = tl.full([BQ], float('-inf'), tl.float32)
        denom = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, BD], tl.float32)
        zi, ri, ci = _first_block(n_c)
        for _ in range(kzk * n_r * n_c):
            s, inwin, k_ok, kt, gk_z, yk, xk = _key_step(
                q, sy, sx, qbias, qz, z_lo, zi, ri, ci, r_lo, c_lo, r_hi, c_hi, K, b * skb + h * skh, skz, sky, skx,
                RPB, h, gz, gy, gx, dz, dy, dx, Vz, Vy, Vx, kzk, kyk, kxk, rpb_plane, scale2, d, d_ok,
                D, BD, KRH, KW, HAS_RPB, IEEE, UPCAST, DEPTH)
            s = tl.where(inwin, s, float('-inf'))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_use = tl.where(m_new == float('-inf'), 0., m_new)
            p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m - m_use)
            denom = denom * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + gk_z * svz + (yk * svy + xk * svx)[:, None] + d[None, :],
                        mask=_lanes(k_ok, d_ok, D, BD, False), other=0.)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE, UPCAST)
            m = m_new
            zi, ri, ci = _next(zi, ri, ci, n_r, n_c, DEPTH)
        has = denom > 0
        out = acc / tl.where(has, denom, 1.)[:, None]
        tl.store(Out + b * sob + h * soh + gq_z * soz + (gq_y * soy + gq_x * sox)[:, None] + d[None, :],
                 out.to(Out.dtype.element_ty), mask=qmask)
        lse = tl.where(has, m + tl.log2(tl.where(has, denom, 1.)), float('inf'))
        tl.store(LSE + ((b * heads + h) * Lz + gq_z) * Ly * Lx + gq_y * Lx + gq_x, lse, mask=q_ok)


@triton.jit
def _rpb_grad_block(ds, r0, c0, y0, qx, kxk, kyk, TQH: tl.constexpr, TQW: tl.constexpr, KRH: tl.constexpr,
                    KW: tl.constexpr, RPY: tl.constexpr):
    """``[RPY, KW]``: the RPB gradient of one ``[BQ, KRH * KW]`` block of ``ds``, binned by relative offset.

    ``ds[q, (rr, j)]`` (key row ``r0 + rr``, column ``c0 + j``) belongs to bin
    ``(r0 + rr - qy + ky - 1, c0 + j - qx + kx - 1)``. A gather along the
    columns shifts each query's row of ``ds`` so that its columns become relative-column bins, a sum
    over the tile's columns leaves ``[TQH, KRH, KW]`` (every query of a tile row has the same relative
    row for a key row), and a one-hot matrix of the relative rows sums those into ``RPY`` row bins.
    """
    BQ: tl.constexpr = TQH * TQW
    rel = tl.arange(0, KW)
    j = tl.broadcast_to(rel[None, None, :] + qx[:, None, None] - c0 - kxk + 1, (BQ, KRH, KW))
    by_rx = tl.where((j >= 0) & (j < KW),
                     tl.gather(tl.reshape(ds, (BQ, KRH, KW)), tl.minimum(tl.maximum(j, 0), KW - 1), 2), 0.)
    by_row = tl.reshape(tl.sum(tl.reshape(by_rx, (TQH, TQW, KRH, KW)), 1), (TQH * KRH, KW))
    i = tl.arange(0, TQH * KRH)
    ry = (r0 - y0) + i % KRH - i // KRH + kyk - 1  # relative row of (tile row, block row)
    hit = (tl.arange(0, RPY)[:, None] == ry[None, :]).to(tl.float32)  # [RPY, TQH * KRH]
    if TQH * KRH >= 16:
        return tl.dot(hit, by_row, input_precision='ieee')
    return tl.sum(hit[:, :, None] * by_row[None, :, :], 1)


@triton.jit(do_not_specialize=_SIZES)
def na_bwd_dq_kernel(Q, K, V, Out, DO, LSE, DELTA, RPB, DQ, DRPB,
                     sqb, sqz, sqy, sqx, sqh, skb, skz, sky, skx, skh, svb, svz, svy, svx, svh,
                     sdb, sdz, sdy, sdx, sdh,
                     heads, Lz, Ly, Lx, kzk, kyk, kxk, dz, dy, dx, Vz, Vy, Vx, tiles_z, tiles_y, tiles_x,
                     scale2, scale,
                     D: tl.constexpr, BD: tl.constexpr, TQH: tl.constexpr, TQW: tl.constexpr,
                     KRH: tl.constexpr, KW: tl.constexpr, RPY: tl.constexpr, HAS_RPB: tl.constexpr,
                     IEEE: tl.constexpr, UPCAST: tl.constexpr, DEPTH: tl.constexpr):
    """dq (and the RPB gradient): the forward's tiling, probabilities recomputed from the saved lse.

    Also computes and stores ``DELTA = rowsum(dO * O)`` of its queries for the dk/dv kernel, which
    runs after it. ``Out`` (the forward output) and ``DQ`` are contiguous ``[B, Z, Y, X, heads, D]``;
    ``DRPB`` is ``[tiles, B, heads, 2kz-1, 2ky-1, 2kx-1]`` fp32, one slot per program (each key depth of
    the tile's window fills one plane of it).
    """
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    gz, gy, gx, lgz, lgy, lgx, qz, y0, x0, qy, qx, q_ok, inside = _tile(
        pid, Lz, Ly, Lx, dz, dy, dx, tiles_z, tiles_y, tiles_x, TQH, TQW)
    if inside:
        BQ: tl.constexpr = TQH * TQW
        gq_z, sy, sx, qbias, d, d_ok, gq_y, gq_x, qmask, q, r_lo, r_hi, c_lo, c_hi, n_r, n_c, rpb_plane, z_lo = \
            _query_side(Q, b * sqb + h * sqh, sqz, sqy, sqx, gz, gy, gx, dz, dy, dx, qz, y0, x0, qy, qx, q_ok,
                        lgz, lgy, lgx, kzk, kyk, kxk, D, BD, TQH, TQW, KRH, KW)
        do = tl.load(DO + b * sdb + h * sdh + gq_z * sdz + (gq_y * sdy + gq_x * sdx)[:, None] + d[None, :],
                     mask=qmask, other=0.)
        stat = ((b * heads + h) * Lz + gq_z) * Ly * Lx + gq_y * Lx + gq_x
        lse = tl.load(LSE + stat, mask=q_ok, other=float('inf'))  # inf: queries outside the map get p = 0
        dense = (((((b * Lz + gq_z) * Ly + gq_y) * Lx + gq_x) * heads + h) * D)[:, None] + d[None, :]
        o = tl.load(Out + dense, mask=qmask, other=0.)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(DELTA + stat, delta, mask=q_ok)
        rx_n = 2 * kxk - 1
        ry_n = 2 * kyk - 1
        rel_y = tl.arange(0, RPY)
        rel = tl.arange(0, KW)
        bins = DRPB + ((pid.to(tl.int64) * tl.num_programs(2) + b) * heads + h) * (2 * kzk - 1) * rpb_plane + (
            rel_y[:, None] * rx_n + rel[None, :])
        bins_ok = (rel_y[:, None] < ry_n) & (rel[None, :] < rx_n)
        dq = tl.zeros([BQ, BD], tl.float32)
        drpb = tl.zeros([RPY, KW], tl.float32)  # RPB bins of one key depth (KW >= 2 kx - 1, RPY >= 2 ky - 1)
        zi, ri, ci = _first_block(n_c)
        for _ in range(kzk * n_r * n_c):
            s, inwin, k_ok, kt, gk_z, yk, xk = _key_step(
                q, sy, sx, qbias, qz, z_lo, zi, ri, ci, r_lo, c_lo, r_hi, c_hi, K, b * skb + h * skh, skz, sky, skx,
                RPB, h, gz, gy, gx, dz, dy, dx, Vz, Vy, Vx, kzk, kyk, kxk, rpb_plane, scale2, d, d_ok,
                D, BD, KRH, KW, HAS_RPB, IEEE, UPCAST, DEPTH)
            vt = tl.load(V + b * svb + h * svh + gk_z * svz + (yk * svy + xk * svx)[None, :] + d[:, None],
                         mask=_lanes(k_ok, d_ok, D, BD, True), other=0.)
            dp = _dot(do, vt, IEEE, UPCAST)
            p = tl.where(inwin, tl.exp2(s - lse[:, None]), 0.)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(kt.dtype), tl.trans(kt), IEEE, UPCAST)
            if HAS_RPB:
                drpb += _rpb_grad_block(ds, r_lo + ri * KRH, c_lo + ci * KW, y0, qx, kxk, kyk, TQH, TQW, KRH, KW,
                                        RPY)
            zi_next, ri, ci = _next(zi, ri, ci, n_r, n_c, DEPTH)
            if HAS_RPB and DEPTH:  # the last block of a key depth: its plane of the slot is complete
                done = zi_next != zi
                tl.store(bins + (z_lo + zi - qz + kzk - 1) * rpb_plane, drpb, mask=bins_ok & done)
                drpb = tl.where(done, 0., drpb)
            zi = zi_next
        if HAS_RPB and not DEPTH:
            tl.store(bins, drpb, mask=bins_ok)
        tl.store(DQ + dense, (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit(do_not_specialize=_SIZES)
def na_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, RPB, DK, DV,
                       sqb, sqz, sqy, sqx, sqh, skb, skz, sky, skx, skh, svb, svz, svy, svx, svh,
                       sdb, sdz, sdy, sdx, sdh,
                       heads, Lz, Ly, Lx, kzk, kyk, kxk, dz, dy, dx, Vz, Vy, Vx, tiles_z, tiles_y, tiles_x,
                       scale2, scale,
                       D: tl.constexpr, BD: tl.constexpr, TKH: tl.constexpr, TKW: tl.constexpr,
                       QRH: tl.constexpr, QW: tl.constexpr, HAS_RPB: tl.constexpr, IEEE: tl.constexpr,
                       UPCAST: tl.constexpr, DEPTH: tl.constexpr):
    """dk and dv: one program = one key tile (one depth); walks the queries whose windows hold its
    keys, one query depth at a time (the depths whose depth window holds the tile's), each in blocks
    of ``QRH`` rows x ``QW`` columns.

    ``DK`` and ``DV`` are contiguous ``[B, Z, Y, X, heads, D]``. Queries of a block outside the box get
    ``lse = inf`` (no probability), keys that must not count a ``FAR`` row (outside every window).
    """
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    gz, gy, gx, lgz, lgy, lgx, kz, y0, x0, ky, kx, k_in, inside = _tile(
        tl.program_id(0), Lz, Ly, Lx, dz, dy, dx, tiles_z, tiles_y, tiles_x, TKH, TKW)
    if inside:
        BK: tl.constexpr = TKH * TKW
        gk_z = gz + dz * kz
        gk_y = gy + dy * ky
        gk_x = gx + dx * kx
        k_ok = k_in & (gk_y < Vy) & (gk_x < Vx) & (gk_z < Vz)
        d = tl.arange(0, BD)
        d_ok = d < D
        kmask = _lanes(k_ok, d_ok, D, BD, False)
        k = tl.load(K + b * skb + h * skh + gk_z * skz + (gk_y * sky + gk_x * skx)[:, None] + d[None, :],
                    mask=kmask, other=0.)
        v = tl.load(V + b * svb + h * svh + gk_z * svz + (gk_y * svy + gk_x * svx)[:, None] + d[None, :],
                    mask=kmask, other=0.)
        ky_w = tl.where(k_ok, ky, FAR)
        rx_n = 2 * kxk - 1
        rpb_plane = (2 * kyk - 1) * rx_n
        kbias = (ky + kyk - 1) * rx_n + kx + kxk - 1
        wry = kyk - 1 - kyk // 2
        wrx = kxk - 1 - kxk // 2
        y1 = tl.minimum(y0 + TKH, lgy) - 1
        x1 = tl.minimum(x0 + TKW, lgx) - 1
        r_lo = tl.where(y0 <= kyk - 1, 0, y0 - wry)
        r_hi = tl.where(y1 >= lgy - kyk, lgy - 1, y1 + kyk // 2) + 1
        c_lo = tl.where(x0 <= kxk - 1, 0, x0 - wrx)
        c_hi = tl.where(x1 >= lgx - kxk, lgx - 1, x1 + kxk // 2) + 1
        # query depths whose depth window holds this key depth (an inverse window, exact)
        z_lo = tl.where(kz <= kzk - 1, 0, kz - (kzk - 1 - kzk // 2))
        z_hi = tl.where(kz >= lgz - kzk, lgz - 1, kz + kzk // 2) + 1
        n_r, n_c = _box_steps(r_lo, r_hi, c_lo, c_hi, QRH, QW)
        dk = tl.zeros([BK, BD], tl.float32)
        dv = tl.zeros([BK, BD], tl.float32)
        zi, ri, ci = _first_block(n_c)
        stat_bh = (b * heads + h) * Lz * Ly * Lx
        for _ in range((z_hi - z_lo) * n_r * n_c):
            gq_z, plane, _vy = _depth(zi, z_lo, z_lo + zi, kz, gz, dz, h, kzk, Vz, Vy, rpb_plane, DEPTH)
            rpb_h = RPB + plane
            q_base = b * sqb + h * sqh + gq_z * sqz
            do_base = b * sdb + h * sdh + gq_z * sdz
            stat_base = stat_bh + gq_z * (Ly * Lx)
            qr, qc, q_ok = _block(ri, ci, r_lo, c_lo, r_hi, c_hi, QRH, QW)
            yq = gy + dy * qr
            xq = gx + dx * qc
            # queries outside the map: the window and RPB index of the last row / column (never
            # counted: their lse is inf), so every RPB index that passes the window test lies in the table
            cr = tl.minimum(qr, lgy - 1)
            cc = tl.minimum(qc, lgx - 1)
            sy = _window_start(cr, lgy, kyk)
            sx = _window_start(cc, lgx, kxk)
            qmask = _lanes(q_ok, d_ok, D, BD, False)
            q = tl.load(Q + q_base + (yq * sqy + xq * sqx)[:, None] + d[None, :], mask=qmask, other=0.)
            do = tl.load(DO + do_base + (yq * sdy + xq * sdx)[:, None] + d[None, :], mask=qmask, other=0.)
            stat = stat_base + yq * Lx + xq
            lse = tl.load(LSE + stat, mask=q_ok, other=float('inf'))
            delta = tl.load(DELTA + stat, mask=q_ok, other=0.)
            inwin = _in_window(ky_w[:, None] - sy[None, :], kyk) & _in_window(kx[:, None] - sx[None, :], kxk)
            st = _dot(k, tl.trans(q), IEEE, UPCAST)
            dpt = _dot(v, tl.trans(do), IEEE, UPCAST)
            if HAS_RPB:
                qbias = cr * rx_n + cc
                st = st * scale2 + tl.load(rpb_h + (kbias[:, None] - qbias[None, :]))
            else:
                st = st * scale2
            pt = tl.where(inwin, tl.exp2(st - lse[None, :]), 0.)
            dst = pt * (dpt - delta[None, :])
            dv += _dot(pt.to(do.dtype), do, IEEE, UPCAST)
            dk += _dot(dst.to(q.dtype), q, IEEE, UPCAST)
            zi, ri, ci = _next(zi, ri, ci, n_r, n_c, DEPTH)
        out = (((((b * Lz + gk_z) * Ly + gk_y) * Lx + gk_x) * heads + h) * D)[:, None] + d[None, :]
        omask = _lanes(k_in, d_ok, D, BD, False)
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=omask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=omask)


@triton.jit
def interpreter_probe_kernel(Out, n):
    """``Out[0] = n`` by a loop of ``n`` steps: :func:`.triton._interpreter_runs_loops` runs it once under
    ``TRITON_INTERPRET=1`` (never compiled for a GPU)."""
    count = n * 0
    for _ in range(n):
        count += 1
    tl.store(Out, count)
