"""Layer code paths for calls traced once per population member inside a vectorised map.

The population engine evaluates all members in one compiled call: a
`keras.ops.vectorized_map` over the member axis of `model.stateless_call`, so every
member has its own weights. Matrix products vectorise into one batched product, but a
convolution with a per-member kernel does not: TensorFlow runs it as a loop over members
and JAX as a grouped convolution, both slow on CPU. While `member_calls()` is active,
`FactorizedConv2D` therefore computes its convolution with `conv2d_by_matmul`, which
uses only reshapes, one matrix product and shifted slices (all of which vectorise);
docs/design.md gives the measured speed-up.
"""

import contextlib
import threading

from keras import ops

_STATE = threading.local()


@contextlib.contextmanager
def member_calls():
    """Marks layer calls traced in this block as per-member calls of a vectorised map.

    Only tracing is affected: enter it inside the function that is compiled.
    """
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def in_member_calls():
    """Whether the current thread is inside `member_calls()`."""
    return getattr(_STATE, "depth", 0) > 0


def _same_padding(length, kernel, stride):
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def conv2d_by_matmul(inputs, kernel, strides, padding):
    """`ops.conv(inputs, kernel, strides, padding)` (channels_last) as one matrix product.

    The input is cut into `strides`-sized blocks (space to depth), so the convolution
    becomes a stride-1 convolution with a `ceil(k / stride)`-sized kernel of blocks. That
    is computed as one product of every block with the kernel pieces of all block
    offsets, followed by a sum of shifted slices, one per offset. The result is exact up
    to floating-point rounding; the multiply-adds are those of the direct convolution
    computed at every block position (about the same for `kernel % stride == 0`).

    Args:
        inputs: Tensor `(batch, height, width, in)` with static spatial shape.
        kernel: Tensor `(kh, kw, in, out)`.
        strides: Pair of positive ints.
        padding: `"valid"` or `"same"`.

    Returns:
        Tensor `(batch, out_height, out_width, out)`.
    """
    kh, kw, channels, filters = (int(d) for d in kernel.shape)
    sh, sw = strides
    height, width = inputs.shape[1], inputs.shape[2]
    if not (isinstance(height, int) and isinstance(width, int)):
        # Unknown spatial dimensions: the blocks cannot be laid out statically.
        return ops.conv(inputs, kernel, strides=strides, padding=padding)
    batch = inputs.shape[0]
    batch = batch if isinstance(batch, int) else -1
    if padding == "same":
        pad_h = _same_padding(height, kh, sh)
        pad_w = _same_padding(width, kw, sw)
        if any(pad_h + pad_w):
            inputs = ops.pad(inputs, [[0, 0], list(pad_h), list(pad_w), [0, 0]])
            height, width = height + sum(pad_h), width + sum(pad_w)
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        return ops.conv(inputs, kernel, strides=strides, padding="valid")
    # Kernel offsets in blocks; the kernel is zero-padded to whole blocks.
    qh, qw = -(-kh // sh), -(-kw // sw)
    if (qh * sh, qw * sw) != (kh, kw):
        kernel = ops.pad(kernel, [[0, qh * sh - kh], [0, qw * sw - kw], [0, 0], [0, 0]])
    # Rows and columns the blocks cover: crop the unused ones, zero-pad missing ones
    # (they only meet the kernel's zero padding).
    rows, cols = (out_h - 1 + qh) * sh, (out_w - 1 + qw) * sw
    if rows > height or cols > width:
        inputs = ops.pad(
            inputs, [[0, 0], [0, max(rows - height, 0)], [0, max(cols - width, 0)], [0, 0]]
        )
    if rows < height or cols < width:
        inputs = inputs[:, :rows, :cols, :]
    blocks_h, blocks_w = rows // sh, cols // sw
    if sh == 1 and sw == 1:
        x = inputs
        pieces = ops.transpose(kernel, (2, 0, 1, 3))
    else:
        x = ops.reshape(inputs, (batch, blocks_h, sh, blocks_w, sw, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        pieces = ops.reshape(kernel, (qh, sh, qw, sw, channels, filters))
        pieces = ops.transpose(pieces, (1, 3, 4, 0, 2, 5))
    x = ops.reshape(x, (batch, blocks_h * blocks_w, sh * sw * channels))
    pieces = ops.reshape(pieces, (sh * sw * channels, qh * qw * filters))
    y = ops.reshape(ops.matmul(x, pieces), (batch, blocks_h, blocks_w, qh * qw, filters))
    out = None
    for a in range(qh):
        for b in range(qw):
            part = y[:, a : a + out_h, b : b + out_w, a * qw + b, :]
            out = part if out is None else ops.add(out, part)
    return out
