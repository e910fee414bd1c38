"""Triton kernels of the ``triton`` NA backend (imported lazily by :mod:`.triton`; needs ``triton``).

Every kernel works on one dilation group at a time: with dilation ``(dy, dx)`` the map splits into
``dy * dx`` interleaved sub-maps (group ``(gy, gx)`` holds the global positions ``gy + dy * i``,
``gx + dx * j``), and NA with dilation is plain NA inside each sub-map. Groups are never copied: the
kernels address the group's tokens through the tensors' strides (heads-last ``[B, Y, X, heads, D]``,
last dim contiguous), so slices of a fused qkv projection are read in place.

Tiles are 2-D boxes of the group's local coordinates. A forward / dq program owns a ``TQH x TQW``
query tile and walks the key box its windows cover (at most ``TQH + k - 1`` rows of
``TQW + k - 1`` columns, since window starts move by at most one per query step) in blocks of
``KRH`` box rows x ``KW`` columns (one flat loop over the blocks, so the compiler can pipeline its
loads); the dk/dv program owns a ``TKH x TKW`` key tile and walks the queries whose windows hold those
keys (inverse windows, wider at the borders) in blocks of ``QRH`` rows x ``QW`` columns. Pairs outside
the exact window are masked, so every output is exact.

Window rule (stride 1, non-causal), local index ``i`` on an axis of group length ``Lg``:
``start(i) = clamp(i - k // 2, 0, Lg - k)``; key ``j`` is in the window of queries
``first(j) .. last(j)`` with ``first(j) = 0 if j <= k - 1 else j - (k - 1 - k // 2)`` and
``last(j) = Lg - 1 if j >= Lg - k else j + k // 2``. Keys at global index ``>= valid`` are dropped.

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

_SIZES = ['Ly', 'Lx', 'kyk', 'kxk', 'dy', 'dx', 'Vy', 'Vx', 'tiles_y', 'tiles_x']


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
def _decode_tile(pid, tiles_y, tiles_x, dx):
    tx = pid % tiles_x
    t = pid // tiles_x
    ty = t % tiles_y
    t = t // tiles_y
    return t // dx, t % dx, ty, tx


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
def _tile(pid, bh, heads, Ly, Lx, dy, dx, tiles_y, tiles_x, TH: tl.constexpr, TW: tl.constexpr):
    """Where program ``(pid, bh)`` works: its dilation group, the group's lengths, and the local
    coordinates of its ``TH x TW`` tile (``inside``: the tile starts inside the group)."""
    gy, gx, ty, tx = _decode_tile(pid, tiles_y, tiles_x, dx)
    lgy = _group_len(Ly, dy, gy)
    lgx = _group_len(Lx, dx, gx)
    y0 = ty * TH
    x0 = tx * TW
    i = tl.arange(0, TH * TW)
    ly = y0 + i // TW
    lx = x0 + i % TW
    return ((bh // heads).to(tl.int64), bh % heads, gy, gx, lgy, lgx, y0, x0, ly, lx,
            (ly < lgy) & (lx < lgx), (y0 < lgy) & (x0 < lgx))


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
    """Blocks of ``RH x CW`` covering rows ``[lo_r, hi_r)`` x columns ``[lo_c, hi_c)``: (count, per row)."""
    n_c = tl.cdiv(hi_c - lo_c, CW)
    return tl.cdiv(hi_r - lo_r, RH) * n_c, n_c


@triton.jit
def _block(step, n_c, lo_r, lo_c, hi_r, hi_c, RH: tl.constexpr, CW: tl.constexpr):
    """Local rows and columns ``[RH * CW]`` of block ``step`` and whether each lies inside the box."""
    i = tl.arange(0, RH * CW)
    r = lo_r + (step // n_c) * RH + i // CW
    c = lo_c + (step % n_c) * CW + i % CW
    return r, c, (r < hi_r) & (c < hi_c)


@triton.jit
def _key_block(K, k_base, sky, skx, gy, gx, dy, dx, step, n_c, r_lo, c_lo, r_hi, c_hi, Vy, Vx, kyk, kxk,
               d, d_ok, D: tl.constexpr, BD: tl.constexpr, RH: tl.constexpr, KW: tl.constexpr):
    """Keys of block ``step`` of the key box: local rows (``FAR`` for keys that must not count) and
    columns, validity, the RPB index term, the keys as ``[BD, RH * KW]``, and their global coordinates
    (for loading values the same way)."""
    kr, kc, k_in = _block(step, n_c, r_lo, c_lo, r_hi, c_hi, RH, KW)
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
        s = s * scale2 + tl.load(rpb_h + (kbias[None, :] - qbias[:, None]), mask=inwin, other=0.)
    else:
        s = s * scale2
    return s, inwin


@triton.jit(do_not_specialize=_SIZES)
def na2d_fwd_kernel(Q, K, V, Out, LSE, RPB,
                    sqb, sqy, sqx, sqh, skb, sky, skx, skh, svb, svy, svx, svh, sob, soy, sox, soh,
                    heads, Ly, Lx, kyk, kxk, dy, dx, Vy, Vx, tiles_y, tiles_x, scale2,
                    D: tl.constexpr, BD: tl.constexpr, TQH: tl.constexpr, TQW: tl.constexpr,
                    KRH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr, IEEE: tl.constexpr,
                    UPCAST: tl.constexpr):
    """Forward: one program = one query tile of one dilation group, one (batch, head)."""
    bh = tl.program_id(1)
    b, h, gy, gx, lgy, lgx, y0, x0, qy, qx, q_ok, inside = _tile(tl.program_id(0), bh, heads, Ly, Lx, dy, dx,
                                                                 tiles_y, tiles_x, TQH, TQW)
    if inside:
        BQ: tl.constexpr = TQH * TQW
        sy, sx, qbias, d, d_ok, gq_y, gq_x, qmask, q = _query_tile(Q, b * sqb + h * sqh, sqy, sqx, gy, gx, dy, dx,
                                                                   qy, qx, q_ok, lgy, lgx, kyk, kxk, D, BD)
        r_lo, r_hi, c_lo, c_hi = _key_box(y0, x0, lgy, lgx, kyk, kxk, TQH, TQW)
        n_steps, n_c = _box_steps(r_lo, r_hi, c_lo, c_hi, KRH, KW)
        rpb_h = RPB + h * (2 * kyk - 1) * (2 * kxk - 1)
        m = tl.full([BQ], float('-inf'), tl.float32)
        denom = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, BD], tl.float32)
        for step in range(n_steps):
            kr, kc, k_ok, kbias, kt, yk, xk = _key_block(K, b * skb + h * skh, sky, skx, gy, gx, dy, dx, step, n_c,
                                                         r_lo, c_lo, r_hi, c_hi, Vy, Vx, kyk, kxk, d, d_ok,
                                                         D, BD, KRH, KW)
            s, inwin = _logits(q, kt, kr, kc, kbias, sy, sx, qbias, kyk, kxk, rpb_h, scale2, HAS_RPB, IEEE, UPCAST)
            s = tl.where(inwin, s, float('-inf'))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_use = tl.where(m_new == float('-inf'), 0., m_new)
            p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m - m_use)
            denom = denom * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + (yk * svy + xk * svx)[:, None] + d[None, :],
                        mask=_lanes(k_ok, d_ok, D, BD, False), other=0.)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE, UPCAST)
            m = m_new
        has = denom > 0
        out = acc / tl.where(has, denom, 1.)[:, None]
        tl.store(Out + b * sob + h * soh + (gq_y * soy + gq_x * sox)[:, None] + d[None, :],
                 out.to(Out.dtype.element_ty), mask=qmask)
        lse = tl.where(has, m + tl.log2(tl.where(has, denom, 1.)), float('inf'))
        tl.store(LSE + bh.to(tl.int64) * Ly * Lx + gq_y * Lx + gq_x, lse, mask=q_ok)


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
def na2d_bwd_dq_kernel(Q, K, V, Out, DO, LSE, DELTA, RPB, DQ, DRPB,
                       sqb, sqy, sqx, sqh, skb, sky, skx, skh, svb, svy, svx, svh, sdb, sdy, sdx, sdh,
                       heads, Ly, Lx, kyk, kxk, dy, dx, Vy, Vx, tiles_y, tiles_x, scale2, scale,
                       D: tl.constexpr, BD: tl.constexpr, TQH: tl.constexpr, TQW: tl.constexpr,
                       KRH: tl.constexpr, KW: tl.constexpr, RPY: tl.constexpr, HAS_RPB: tl.constexpr,
                       IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """dq (and the RPB gradient): the forward's tiling, probabilities recomputed from the saved lse.

    Also computes and stores ``DELTA = rowsum(dO * O)`` of its queries for the dk/dv kernel, which
    runs after it. ``Out`` (the forward output) and ``DQ`` are contiguous ``[B, Y, X, heads, D]``;
    ``DRPB`` is ``[tiles, B * heads, 2ky-1, 2kx-1]`` fp32, one slot per program.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b, h, gy, gx, lgy, lgx, y0, x0, qy, qx, q_ok, inside = _tile(pid, bh, heads, Ly, Lx, dy, dx,
                                                                 tiles_y, tiles_x, TQH, TQW)
    if inside:
        BQ: tl.constexpr = TQH * TQW
        sy, sx, qbias, d, d_ok, gq_y, gq_x, qmask, q = _query_tile(Q, b * sqb + h * sqh, sqy, sqx, gy, gx, dy, dx,
                                                                   qy, qx, q_ok, lgy, lgx, kyk, kxk, D, BD)
        do = tl.load(DO + b * sdb + h * sdh + (gq_y * sdy + gq_x * sdx)[:, None] + d[None, :], mask=qmask, other=0.)
        stat = bh.to(tl.int64) * Ly * Lx + gq_y * Lx + gq_x
        lse = tl.load(LSE + stat, mask=q_ok, other=float('inf'))  # inf: queries outside the map get p = 0
        dense = ((((b * Ly + gq_y) * Lx + gq_x) * heads + h) * D)[:, None] + d[None, :]  # contiguous layout
        o = tl.load(Out + dense, mask=qmask, other=0.)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(DELTA + stat, delta, mask=q_ok)
        r_lo, r_hi, c_lo, c_hi = _key_box(y0, x0, lgy, lgx, kyk, kxk, TQH, TQW)
        n_steps, n_c = _box_steps(r_lo, r_hi, c_lo, c_hi, KRH, KW)
        rx_n = 2 * kxk - 1
        ry_n = 2 * kyk - 1
        rpb_h = RPB + h * ry_n * rx_n
        dq = tl.zeros([BQ, BD], tl.float32)
        drpb = tl.zeros([RPY, KW], tl.float32)  # RPB bins (KW >= 2 kx - 1, RPY >= 2 ky - 1)
        for step in range(n_steps):
            kr, kc, k_ok, kbias, kt, yk, xk = _key_block(K, b * skb + h * skh, sky, skx, gy, gx, dy, dx, step, n_c,
                                                         r_lo, c_lo, r_hi, c_hi, Vy, Vx, kyk, kxk, d, d_ok,
                                                         D, BD, KRH, KW)
            vt = tl.load(V + b * svb + h * svh + (yk * svy + xk * svx)[None, :] + d[:, None],
                         mask=_lanes(k_ok, d_ok, D, BD, True), other=0.)
            s, inwin = _logits(q, kt, kr, kc, kbias, sy, sx, qbias, kyk, kxk, rpb_h, scale2, HAS_RPB, IEEE, UPCAST)
            dp = _dot(do, vt, IEEE, UPCAST)
            p = tl.where(inwin, tl.exp2(s - lse[:, None]), 0.)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(kt.dtype), tl.trans(kt), IEEE, UPCAST)
            if HAS_RPB:
                drpb += _rpb_grad_block(ds, r_lo + (step // n_c) * KRH, c_lo + (step % n_c) * KW, y0, qx, kxk,
                                        kyk, TQH, TQW, KRH, KW, RPY)
        tl.store(DQ + dense, (dq * scale).to(DQ.dtype.element_ty), mask=qmask)
        if HAS_RPB:
            rel_y = tl.arange(0, RPY)
            rel = tl.arange(0, KW)
            slot = DRPB + (pid.to(tl.int64) * tl.num_programs(1) + bh) * ry_n * rx_n
            tl.store(slot + rel_y[:, None] * rx_n + rel[None, :], drpb,
                     mask=(rel_y[:, None] < ry_n) & (rel[None, :] < rx_n))


@triton.jit(do_not_specialize=_SIZES)
def na2d_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, RPB, DK, DV,
                         sqb, sqy, sqx, sqh, skb, sky, skx, skh, svb, svy, svx, svh, sdb, sdy, sdx, sdh,
                         heads, Ly, Lx, kyk, kxk, dy, dx, Vy, Vx, tiles_y, tiles_x, scale2, scale,
                         D: tl.constexpr, BD: tl.constexpr, TKH: tl.constexpr, TKW: tl.constexpr,
                         QRH: tl.constexpr, QW: tl.constexpr, HAS_RPB: tl.constexpr, IEEE: tl.constexpr,
                         UPCAST: tl.constexpr):
    """dk and dv: one program = one key tile; walks the queries whose windows hold its keys.

    ``DK`` and ``DV`` are contiguous ``[B, Y, X, heads, D]``. Queries of a block outside the box get
    ``lse = inf`` (no probability), keys that must not count a ``FAR`` row (outside every window).
    """
    bh = tl.program_id(1)
    b, h, gy, gx, lgy, lgx, y0, x0, ky, kx, k_in, inside = _tile(tl.program_id(0), bh, heads, Ly, Lx, dy, dx,
                                                                 tiles_y, tiles_x, TKH, TKW)
    if inside:
        BK: tl.constexpr = TKH * TKW
        gk_y = gy + dy * ky
        gk_x = gx + dx * kx
        k_ok = k_in & (gk_y < Vy) & (gk_x < Vx)
        d = tl.arange(0, BD)
        d_ok = d < D
        kmask = _lanes(k_ok, d_ok, D, BD, False)
        k = tl.load(K + b * skb + h * skh + (gk_y * sky + gk_x * skx)[:, None] + d[None, :], mask=kmask, other=0.)
        v = tl.load(V + b * svb + h * svh + (gk_y * svy + gk_x * svx)[:, None] + d[None, :], mask=kmask, other=0.)
        ky_w = tl.where(k_ok, ky, FAR)
        rx_n = 2 * kxk - 1
        kbias = (ky + kyk - 1) * rx_n + kx + kxk - 1
        wry = kyk - 1 - kyk // 2
        wrx = kxk - 1 - kxk // 2
        y1 = tl.minimum(y0 + TKH, lgy) - 1
        x1 = tl.minimum(x0 + TKW, lgx) - 1
        r_lo = tl.where(y0 <= kyk - 1, 0, y0 - wry)
        r_hi = tl.where(y1 >= lgy - kyk, lgy - 1, y1 + kyk // 2) + 1
        c_lo = tl.where(x0 <= kxk - 1, 0, x0 - wrx)
        c_hi = tl.where(x1 >= lgx - kxk, lgx - 1, x1 + kxk // 2) + 1
        n_steps, n_c = _box_steps(r_lo, r_hi, c_lo, c_hi, QRH, QW)
        rpb_h = RPB + h * (2 * kyk - 1) * rx_n
        dk = tl.zeros([BK, BD], tl.float32)
        dv = tl.zeros([BK, BD], tl.float32)
        for step in range(n_steps):
            qr, qc, q_ok = _block(step, n_c, r_lo, c_lo, r_hi, c_hi, QRH, QW)
            yq = gy + dy * qr
            xq = gx + dx * qc
            # queries outside the map: the window and RPB index of the last row / column (never counted:
            # their lse is inf), so every RPB index that passes the window test lies in the table
            cr = tl.minimum(qr, lgy - 1)
            cc = tl.minimum(qc, lgx - 1)
            sy = _window_start(cr, lgy, kyk)
            sx = _window_start(cc, lgx, kxk)
            qmask = _lanes(q_ok, d_ok, D, BD, False)
            q = tl.load(Q + b * sqb + h * sqh + (yq * sqy + xq * sqx)[:, None] + d[None, :], mask=qmask, other=0.)
            do = tl.load(DO + b * sdb + h * sdh + (yq * sdy + xq * sdx)[:, None] + d[None, :], mask=qmask, other=0.)
            stat = bh.to(tl.int64) * Ly * Lx + yq * Lx + xq
            lse = tl.load(LSE + stat, mask=q_ok, other=float('inf'))
            delta = tl.load(DELTA + stat, mask=q_ok, other=0.)
            inwin = _in_window(ky_w[:, None] - sy[None, :], kyk) & _in_window(kx[:, None] - sx[None, :], kxk)
            st = _dot(k, tl.trans(q), IEEE, UPCAST)
            dpt = _dot(v, tl.trans(do), IEEE, UPCAST)
            if HAS_RPB:
                qbias = cr * rx_n + cc
                st = st * scale2 + tl.load(rpb_h + (kbias[:, None] - qbias[None, :]), mask=inwin, other=0.)
            else:
                st = st * scale2
            pt = tl.where(inwin, tl.exp2(st - lse[None, :]), 0.)
            dst = pt * (dpt - delta[None, :])
            dv += _dot(pt.to(do.dtype), do, IEEE, UPCAST)
            dk += _dot(dst.to(q.dtype), q, IEEE, UPCAST)
        out = ((((b * Ly + gk_y) * Lx + gk_x) * heads + h) * D)[:, None] + d[None, :]
        omask = _lanes(k_in, d_ok, D, BD, False)
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=omask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=omask)
