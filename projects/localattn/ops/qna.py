"""QnA local attention ("Learned Queries for Efficient Local Attention", CVPR 2022), functional core.

For every output pixel ``i``, learned query ``l`` and head ``m`` the op takes a softmax over the
``k x k`` window of input pixels ``j = stride * i + o - p`` (``p = (k - 1) // 2``) that lie INSIDE the
image (out-of-image keys are masked, not zero-feature keys)::

    a_lm(i, o) = exp(s_lm(j) + b_lm(o)) / sum_{o' in image} exp(s_lm(j') + b_lm(o'))
    z_m(i)     = sum_l sum_o w_lm(o) * a_lm(i, o) * v_m(j)

where ``s`` are the (already folded) query-key logits, ``b`` the relative positional bias and ``w``
the attention-scale weights (applied to the numerator only).

Efficient form: ``exp(s + b) = exp(s) * exp(b)`` and ``s`` depends only on the key pixel, so with
``E = exp(s - c)`` and ``U = E * v`` the numerator is a depthwise convolution of ``U`` with kernel
``exp(b - max b) * w`` (the same kernel for the ``d`` channels of a head) and the denominator a
depthwise convolution of ``E`` with kernel ``exp(b - max b)``; zero padding in exp-space masks
out-of-image keys exactly. Activations are a few ``L * C * H * W`` maps (``U``, the numerator, their
ratio), forward and backward: no ``k * k`` factor (an unfold-based local attention needs about
``2 * k * k * C * H * W``). On CPU, for windows above 5, the kernels' gradient is itself a
depthwise convolution (:class:`_DepthwiseConv2d`).

Numerical safety:

* exp, both convolutions and the division run in fp32 (fp64 for fp64 inputs) with autocast
  disabled, forward and backward, whatever the input dtype; the result is cast back to the inputs'
  dtype.
* The stabiliser ``c`` is the per (batch, query, head) maximum of the logits over the whole map, and
  ``max b`` the per (query, head) maximum of the bias over the window. Both are constant over every
  window, so they cancel exactly between numerator and denominator (and are detached).
* A global ``c`` can underflow a whole window far below the global maximum to ``0 / 0``. Every
  output (pixel, query, head) whose stabilised denominator is below ``exp(-fallback_margin)``
  (default ``exp(-30)``) is recomputed exactly with an explicit per-window softmax over just those
  windows (gathered, with their own maximum). This criterion covers both a window whose logits lie
  far below ``c`` and one whose only large logits sit at offsets with a very negative bias, and it
  bounds the backward of ``1 / den`` (``1 / den ** 2 <= exp(60)``). The fallback is rare for
  normalised inputs; its memory is ``k * k * head_dim`` per recomputed entry. While torch traces
  (``torch.compile``, export) the branch is a ``torch.cond`` whose true branch recomputes every
  window densely (no data-dependent shapes; ``k * k`` times the inputs' memory, only when taken).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['qna2d']

#: Largest window for which the native CPU weight gradient is used: it is the fastest for small
#: windows, while for larger ones its scratch grows with k and beyond 13 it falls back to a GEMM
#: several times slower (oneDNN), so :class:`_DepthwiseConv2d` takes over.
NATIVE_WEIGHT_GRAD_MAX_KERNEL = 5
#: Channels per call of :func:`_depthwise_weight_grad` (one AVX-512 block of oneDNN's kernel).
WEIGHT_GRAD_CHUNK = 16


def _check_inputs(logits: Tensor, value: Tensor, rpb: Tensor, scale_weights: Tensor,
                  kernel_size: int, stride: int) -> None:
    """Raise ``ValueError`` naming the offending argument when shapes or options are inconsistent."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f'stride must be a positive int, got {stride!r}')
    if logits.dim() != 5:
        raise ValueError(f'logits must be [B, H, W, L, heads], got shape {tuple(logits.shape)}')
    if value.dim() != 5:
        raise ValueError(f'value must be [B, H, W, heads, head_dim], got shape {tuple(value.shape)}')
    batch, height, width, num_queries, heads = logits.shape
    if value.shape[:4] != (batch, height, width, heads):
        raise ValueError(f'value shape {tuple(value.shape)} does not match logits shape '
                         f'{tuple(logits.shape)}: expected [{batch}, {height}, {width}, {heads}, head_dim]')
    if height < 1 or width < 1:
        raise ValueError(f'logits must have a non-empty map, got H={height}, W={width}')
    table_shape = (num_queries, heads, kernel_size, kernel_size)
    for name, table in (('rpb', rpb), ('scale_weights', scale_weights)):
        if tuple(table.shape) != table_shape:
            raise ValueError(f'{name} must have shape [L, heads, k, k] = {table_shape}, '
                             f'got {tuple(table.shape)}')


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 when any input is fp64 (for gradcheck), fp32 otherwise (fp16/bf16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _to_nchw(x: Tensor) -> Tensor:
    """``[B, H, W, *channels]`` -> ``[B, prod(channels), H, W]``.

    A channels-last view (no copy) that oneDNN/cuDNN convolve directly, except for fp64, whose
    fallback CPU convolution is much slower on channels-last maps: there a contiguous copy.
    """
    nchw = x.reshape(*x.shape[:3], -1).permute(0, 3, 1, 2)
    return nchw.contiguous() if x.dtype == torch.float64 else nchw


def _depthwise_weight_grad(x: Tensor, grad: Tensor, kernel_size: int, stride: int,
                           padding: int) -> Tensor:
    """Weight gradient of a depthwise convolution, itself computed as a depthwise convolution.

    ``dK[c, o] = sum_{b, i} G[b, c, i] * x[b, c, s * i + o - p]``: the maps ``x`` (one channel per
    ``(b, c)``) correlated with the output gradient ``G`` used as a (dilation ``s``) kernel, then summed
    over the batch. Runs over chunks of ``WEIGHT_GRAD_CHUNK`` channels, so the copies it needs (a
    zero-padded ``x``, ``G`` as a kernel, oneDNN's blocked reorders) stay a fraction of one map.

    Args:
        x: ``[B, C, H, W]``. grad: ``[B, C, H', W']``.

    Returns:
        ``[C, 1, k, k]``.
    """
    batch, channels, height, width = x.shape
    chunks = []
    for start in range(0, channels, WEIGHT_GRAD_CHUNK):
        part = x[:, start:start + WEIGHT_GRAD_CHUNK]
        groups = batch * part.shape[1]
        # Zero-padded NCHW copy: oneDNN's direct depthwise kernel rejects large implicit padding.
        maps = x.new_zeros(1, groups, height + 2 * padding, width + 2 * padding)
        maps.view(batch, part.shape[1], *maps.shape[-2:])[:, :, padding:padding + height,
                                                          padding:padding + width] = part
        kernels = grad[:, start:start + WEIGHT_GRAD_CHUNK].reshape(groups, 1, *grad.shape[-2:])
        corr = F.conv2d(maps, kernels, dilation=stride, groups=groups)
        corr = corr[0, :, :kernel_size, :kernel_size]  # stride 2 on even maps yields k + 1 lags
        chunks.append(corr.reshape(batch, -1, kernel_size, kernel_size).sum(0))
    return torch.cat(chunks).unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, groups=C)`` with the weight gradient of :func:`_depthwise_weight_grad`.

    Used on CPU for windows above ``NATIVE_WEIGHT_GRAD_MAX_KERNEL``; the input gradient keeps the
    native backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        # A backward called under autocast would otherwise run these convolutions in half precision.
        with torch.autocast(device_type=grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = torch.ops.aten.convolution_backward(
                    grad, x, weight, None, [ctx.stride] * 2, [ctx.padding] * 2, [1, 1], False,
                    [0, 0], x.shape[1], (True, False, False))[0]
            if ctx.needs_input_grad[1]:
                grad_weight = _depthwise_weight_grad(x, grad, weight.shape[-1], ctx.stride,
                                                     ctx.padding)
        return grad_x, grad_weight, None, None


def _depthwise_conv2d(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``[B, C, H, W]`` * ``[C, 1, k, k]`` -> ``[B, C, H', W']``.

    :class:`_DepthwiseConv2d` on CPU for ``k > NATIVE_WEIGHT_GRAD_MAX_KERNEL``; elsewhere (small
    windows, CUDA) the native convolution and its backward.
    """
    if x.device.type == 'cpu' and weight.shape[-1] > NATIVE_WEIGHT_GRAD_MAX_KERNEL:
        return _DepthwiseConv2d.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])


def _window_softmax(logits: Tensor, value: Tensor, rpb: Tensor, scale_weights: Tensor,
                    index: tuple[Tensor, ...], kernel_size: int, stride: int) -> Tensor:
    """Explicit, max-subtracted window softmax for the selected outputs only.

    Args:
        logits: ``[B, H, W, L, heads]``. value: ``[B, H, W, heads, d]``.
        rpb, scale_weights: ``[L, heads, k, k]``.
        index: ``(b, y, x, l, m)`` index tensors of length ``n`` (output pixel ``(y, x)``).

    Returns:
        ``[n, d]``: ``sum_o w(o) * softmax_o(s(j) + b(o)) * v(j)`` over in-image window keys.
    """
    b, y, x, q, m = index
    _, height, width, _, _ = logits.shape
    pad = (kernel_size - 1) // 2
    offsets = torch.arange(kernel_size, device=logits.device) - pad
    rows = (stride * y)[:, None, None] + offsets[None, :, None]          # [n, k, 1]
    cols = (stride * x)[:, None, None] + offsets[None, None, :]          # [n, 1, k]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)  # [n, k, k]
    rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    b3, q3, m3 = b[:, None, None], q[:, None, None], m[:, None, None]
    scores = logits[b3, rows, cols, q3, m3] + rpb[q, m]                  # [n, k, k]
    scores = scores.masked_fill(~inside, float('-inf')).flatten(1)
    attn = torch.softmax(scores, dim=1) * scale_weights[q, m].flatten(1)  # [n, k*k]
    keys_v = value[b3, rows, cols, m3].flatten(1, 2)                     # [n, k*k, d]
    return torch.einsum('nk,nkd->nd', attn, keys_v)


def _dense_window_softmax(logits: Tensor, value: Tensor, rpb: Tensor, scale_weights: Tensor,
                          kernel_size: int, stride: int) -> Tensor:
    """Explicit, max-subtracted window softmax for every output (the traced form of the fallback).

    No data-dependent shapes (unlike :func:`_window_softmax`), at ``k * k`` times the memory of
    ``logits`` and ``value``: under ``torch.compile``/export it runs only when some output needs it.

    Args:
        logits: ``[B, H, W, L, heads]``. value: ``[B, H, W, heads, d]``.
        rpb, scale_weights: ``[L, heads, k, k]``.

    Returns:
        ``[B, H', W', L, heads, d]``.
    """
    batch, height, width, num_queries, heads = logits.shape
    head_dim, kk, pad = value.shape[-1], kernel_size * kernel_size, (kernel_size - 1) // 2

    def windows(x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, k * k, H', W']
        cols = F.unfold(x, kernel_size, padding=pad, stride=stride)
        out_h, out_w = (height + 2 * pad - kernel_size) // stride + 1, (width + 2 * pad - kernel_size) // stride + 1
        return cols.view(x.shape[0], x.shape[1], kk, out_h, out_w)

    inside = windows(logits.new_ones(1, 1, height, width)) > 0                 # [1, 1, kk, H', W']
    scores = windows(logits.permute(0, 3, 4, 1, 2).reshape(batch, -1, height, width))
    scores = scores.view(batch, num_queries, heads, kk, *scores.shape[-2:]) + rpb.reshape(
        1, num_queries, heads, kk, 1, 1)
    scores = scores.masked_fill(~inside.unsqueeze(1), float('-inf'))
    attn = scores.softmax(dim=3) * scale_weights.reshape(1, num_queries, heads, kk, 1, 1)
    keys = windows(value.permute(0, 3, 4, 1, 2).reshape(batch, -1, height, width))
    keys = keys.view(batch, heads, head_dim, kk, *keys.shape[-2:])
    return torch.einsum('blhkyx,bhdkyx->byxlhd', attn, keys)


def _qna2d_exp_space(logits: Tensor, value: Tensor, rpb: Tensor, scale_weights: Tensor,
                     kernel_size: int, stride: int, fallback_margin: float) -> Tensor:
    """The efficient form in full precision: ``[B, H, W, L, h]``, ``[B, H, W, h, d]`` -> ``[B, H', W', h, d]``."""
    batch, _, _, num_queries, heads = logits.shape
    head_dim = value.shape[-1]
    pad = (kernel_size - 1) // 2

    stab = logits.detach().amax(dim=(1, 2), keepdim=True)                # [B, 1, 1, L, h]
    exp_logits = torch.exp(logits - stab)                                # E: [B, H, W, L, h]
    weighted = exp_logits[..., None] * value[:, :, :, None]              # U: [B, H, W, L, h, d]

    exp_bias = torch.exp(rpb - rpb.detach().amax(dim=(2, 3), keepdim=True))  # [L, h, k, k]
    den_kernel = exp_bias.reshape(num_queries * heads, 1, kernel_size, kernel_size)
    num_kernel = (exp_bias * scale_weights)[:, :, None].expand(-1, -1, head_dim, -1, -1)
    num_kernel = num_kernel.reshape(num_queries * heads * head_dim, 1, kernel_size, kernel_size)

    den = _depthwise_conv2d(_to_nchw(exp_logits), den_kernel, stride, pad)
    num = _depthwise_conv2d(_to_nchw(weighted), num_kernel, stride, pad)
    out_h, out_w = den.shape[-2:]
    den = den.permute(0, 2, 3, 1).reshape(batch, out_h, out_w, num_queries, heads)
    num = num.permute(0, 2, 3, 1).reshape(batch, out_h, out_w, num_queries, heads, head_dim)

    underflow = den < math.exp(-fallback_margin)                         # [B, H', W', L, h]
    ratio = num * den.masked_fill(underflow, 1.0).reciprocal()[..., None]  # [B, H', W', L, h, d]

    def with_fallback(ratio, underflow, logits, value, rpb, scale_weights):
        index = underflow.nonzero(as_tuple=True)
        exact = _window_softmax(logits, value, rpb, scale_weights, index, kernel_size, stride)
        return ratio.index_put(index, exact).sum(dim=3)

    def without_fallback(ratio, *_):
        return ratio.sum(dim=3)

    operands = (ratio, underflow, logits, value, rpb, scale_weights)
    if torch.compiler.is_compiling():
        # torch.compile / export: the data-dependent branch as torch.cond, whose true branch is
        # the dense fallback (no data-dependent shapes). Operands enter flattened (and are viewed
        # back inside): inductor may give 4-D+ intermediates any layout, which the branch
        # subgraphs then reject (torch 2.13).
        shapes = [x.shape for x in operands]

        def dense_fallback(ratio, underflow, logits, value, rpb, scale_weights):
            exact = _dense_window_softmax(logits, value, rpb, scale_weights, kernel_size, stride)
            return torch.where(underflow[..., None], exact, ratio).sum(dim=3)

        def unflatten(branch):
            return lambda *flat: branch(*(x.view(shape) for x, shape in zip(flat, shapes)))

        return torch.cond(underflow.any(), unflatten(dense_fallback), unflatten(without_fallback),
                          tuple(x.reshape(-1) for x in operands))
    return with_fallback(*operands) if underflow.any() else without_fallback(*operands)


def qna2d(logits: Tensor, value: Tensor, rpb: Tensor, scale_weights: Tensor, *,
          kernel_size: int, stride: int = 1, fallback_margin: float = 30.0) -> Tensor:
    """QnA attention over ``k x k`` windows (masked at the border), summed over the learned queries.

    Args:
        logits: ``[B, H, W, L, heads]`` folded query-key logits ``x_j . (W_k q_hat_l)`` with ``q_hat``
            L2-normalised per (query, head) and divided by ``sqrt(head_dim)``.
        value: ``[B, H, W, heads, head_dim]``.
        rpb: ``[L, heads, k, k]`` relative positional bias per window offset ``(dy, dx)``.
        scale_weights: ``[L, heads, k, k]`` attention-scale weights ``w`` (multiply the numerator).
        kernel_size: odd window size ``k``; padding is ``(k - 1) // 2``.
        stride: output stride ``s``; output pixel ``i`` reads inputs ``s * i + o - p``.
        fallback_margin: an output whose stabilised softmax denominator is below
            ``exp(-fallback_margin)`` is recomputed with an explicit per-window softmax. The backward
            of ``1 / den`` scales by ``1 / den ** 2``: keep ``2 * fallback_margin`` well below fp32's
            ``log(max) = 88``.

    Returns:
        ``[B, ceil(H / s), ceil(W / s), heads, head_dim]`` in the promoted dtype of ``logits`` and
        ``value``; computed in fp32 (fp64 for fp64 inputs) with autocast disabled.
    """
    _check_inputs(logits, value, rpb, scale_weights, kernel_size, stride)
    out_dtype = torch.promote_types(logits.dtype, value.dtype)
    dtype = _compute_dtype(logits, value, rpb, scale_weights)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        out = _qna2d_exp_space(logits.to(dtype), value.to(dtype), rpb.to(dtype),
                               scale_weights.to(dtype), kernel_size, stride, fallback_margin)
    return out.to(out_dtype)
