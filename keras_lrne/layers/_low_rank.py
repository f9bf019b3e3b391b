"""Per-member low-rank terms of layer calls, computed without materialising weights.

Two kinds of low rank meet a layer's weight matrix `W` inside the population engine's
vectorised member calls (`_vectorized.member_calls()`):

- a member's low-rank *perturbation* (`OpenES(perturbation_rank=r)`): the member's
  weights are `W + left @ transpose(right)`, with `W` the mean shared by all members;
- a Keras *LoRA adapter* (`layer.enable_lora(rank)`): `W0 + scale * lora_a @ lora_b`,
  with the base `W0` frozen and the factors evolved per member.

Either way a layer linear in its weights computes `f(x, W)` once for all members (`W`
is not per member, so the vectorised map turns it into one product over every member's
inputs) plus, per member, `f(x, left)` contracted with the small right factor. The
merged `(m, n)` matrix of a member is never built. Keras' own `Dense.kernel` property
merges LoRA factors into the kernel, so during member calls the supported Keras layers
(`Dense`, `EinsumDense`, `Embedding`, channels-last `Conv2D` with unit dilation) run
`call`s of this module instead of their own (`patched_calls`); keras-lrne's own layers
that list a variable in `_lrne_unmaterialized` consult `delta_for(variable)` themselves
(`matmul`). For any other layer the engine materialises the member's weights.

For a kernel of shape `(*lead, n)` (a convolution's `(kh, kw, in, out)`), the left factor
has shape `(*lead, r)` here: the leading dimensions are the rows `m = prod(lead)`.
"""

import contextlib
import threading

import keras
from keras import ops

from keras_lrne.layers import _vectorized

_STATE = threading.local()


@contextlib.contextmanager
def deltas(mapping):
    """Registers per-member perturbations `{id(variable): (left, right)}` for the layer
    calls traced inside the block; `left` is `(m, r)`, `right` is `(n, r)` (the member's
    weights are `variable + reshape(left @ transpose(right), variable.shape)`)."""
    previous = getattr(_STATE, "deltas", {})
    _STATE.deltas = {**previous, **mapping}
    try:
        yield
    finally:
        _STATE.deltas = previous


def delta_for(variable):
    """The `(left, right)` perturbation registered for `variable`, or None."""
    return getattr(_STATE, "deltas", {}).get(id(variable))


def matmul(x, variable):
    """`x @ variable` plus the registered member perturbation's `(x @ left) @ right^T`."""
    y = ops.matmul(x, variable)
    delta = delta_for(variable)
    if delta is not None:
        left, right = delta
        y = y + ops.matmul(ops.matmul(x, ops.cast(left, x.dtype)),
                           ops.transpose(ops.cast(right, x.dtype)))
    return y


def take(variable, ids):
    """Rows `ids` of `variable` (an embedding table) plus the registered member
    perturbation's rows, `take(left, ids) @ right^T`."""
    rows = ops.take(variable, ids, axis=0)
    delta = delta_for(variable)
    if delta is not None:
        left, right = delta
        rows = rows + ops.matmul(ops.take(left, ids, axis=0), ops.transpose(right))
    return rows


def transposed_matmul(x, variable):
    """`x @ transpose(variable)` plus the perturbation's `(x @ right) @ left^T` (a tied
    output head reading an embedding table)."""
    y = ops.matmul(x, ops.transpose(ops.cast(variable, x.dtype)))
    delta = delta_for(variable)
    if delta is not None:
        left, right = delta
        y = y + ops.matmul(ops.matmul(x, ops.cast(right, x.dtype)),
                           ops.transpose(ops.cast(left, x.dtype)))
    return y


# -- Keras layers --------------------------------------------------------------------------
def _einsum_output_axis(equation):
    """Position (from the end) of the kernel's last axis in the output of an EinsumDense
    equation, or None when that axis does not appear in the output alone."""
    try:
        inputs, output = equation.replace(" ", "").split("->")
        x_spec, kernel_spec = inputs.split(",")
    except ValueError:
        return None
    last = kernel_spec[-1:]
    if not last or last == "." or last in x_spec or output.count(last) != 1:
        return None
    position = output.index(last)
    if "..." in output and position < output.index("..."):
        return None
    return len(output) - position - 1


def _weight_variable(layer):
    """The raw weight variable a supported Keras layer multiplies by, or None."""
    if getattr(layer, "quantization_mode", None):
        return None
    if type(layer).call is keras.layers.Dense.call and isinstance(layer, keras.layers.Dense):
        return layer._kernel
    if (isinstance(layer, keras.layers.EinsumDense)
            and type(layer).call is keras.layers.EinsumDense.call
            and _einsum_output_axis(layer.equation) is not None):
        return layer._kernel
    if (isinstance(layer, keras.layers.Embedding)
            and type(layer).call is keras.layers.Embedding.call):
        return layer._embeddings
    if (isinstance(layer, keras.layers.Conv2D)
            and type(layer).call is keras.layers.Conv2D.call
            and layer.data_format == "channels_last"
            and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1):
        return layer._kernel
    return None


def supports(layer, variable):
    """Whether member calls of `layer` add `variable`'s perturbation without
    materialising it."""
    if layer is None:
        return False
    if variable.path.rsplit("/", 1)[-1] in getattr(layer, "_lrne_unmaterialized", ()):
        return True
    weight = _weight_variable(layer)
    return weight is not None and weight is variable


def patches_lora(layer):
    """Whether `layer` has a LoRA adapter that `patched_calls` computes unmerged."""
    return bool(getattr(layer, "lora_enabled", False)) and _weight_variable(layer) is not None


def _terms(layer, weight):
    """`[(left (*lead, r), right_t (r, n))]`: the layer's LoRA adapter and the member's
    perturbation of `weight`, both as products with a small right factor."""
    lead = tuple(weight.shape[:-1])
    terms = []
    if getattr(layer, "lora_enabled", False):
        if isinstance(layer, keras.layers.Embedding):
            a, b = layer.lora_embeddings_a, layer.lora_embeddings_b
        else:
            a, b = layer.lora_kernel_a, layer.lora_kernel_b
        scale = layer.lora_alpha / layer.lora_rank
        terms.append((ops.reshape(a, (*lead, -1)), ops.convert_to_tensor(b) * scale))
    delta = delta_for(weight)
    if delta is not None:
        left, right = delta
        terms.append((ops.reshape(left, (*lead, -1)), ops.transpose(right)))
    return terms


def _linear(layer, weight, apply, axis=-1):
    """`apply(weight)` plus, for every term, `apply(left)` contracted with `right_t` on
    output axis `axis` (counted from the end)."""
    y = apply(weight)
    for left, right_t in _terms(layer, weight):
        t = apply(left)
        right_t = ops.cast(right_t, t.dtype)
        if axis == -1:
            y = y + ops.matmul(t, right_t)
        else:
            moved = ops.moveaxis(t, axis, -1)
            y = y + ops.moveaxis(ops.matmul(moved, right_t), -1, axis)
    return y


def _finish(layer, x, bias_shape=None):
    if layer.bias is not None:
        bias = layer.bias if bias_shape is None else ops.reshape(layer.bias, bias_shape)
        x = ops.add(x, bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def _dense_call(layer, inputs, training=None):
    def apply(w):
        return ops.matmul(inputs, ops.cast(w, inputs.dtype))

    return _finish(layer, _linear(layer, layer._kernel, apply))


def _einsum_dense_call(layer, inputs, training=None):
    axis = -1 - _einsum_output_axis(layer.equation)

    def apply(w):
        return ops.einsum(layer.equation, inputs, ops.cast(w, inputs.dtype))

    return _finish(layer, _linear(layer, layer._kernel, apply, axis))


def _embedding_call(layer, inputs):
    if inputs.dtype not in ("int32", "int64"):
        inputs = ops.cast(inputs, "int32")

    def apply(w):
        return ops.cast(ops.take(w, inputs, axis=0), layer.compute_dtype)

    return _linear(layer, layer._embeddings, apply)


def _conv2d_call(layer, inputs):
    weight = layer._kernel
    strides, padding = tuple(layer.strides), layer.padding
    y = layer.convolution_op(inputs, ops.cast(weight, inputs.dtype))
    for left, right_t in _terms(layer, weight):
        # A member's own (small) factor: a convolution that vectorises over members.
        t = _vectorized.conv2d_by_matmul(inputs, ops.cast(left, inputs.dtype), strides,
                                         padding)
        y = y + ops.matmul(t, ops.cast(right_t, t.dtype))
    return _finish(layer, y, (1, 1, 1, layer.filters))


def _call_for(layer):
    if isinstance(layer, keras.layers.Dense):
        return _dense_call
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_dense_call
    if isinstance(layer, keras.layers.Embedding):
        return _embedding_call
    return _conv2d_call


@contextlib.contextmanager
def patched_calls(layers):
    """Runs the supported Keras `layers`' calls through this module's unmerged,
    unmaterialised versions inside the block (only tracing is affected: enter it inside
    the compiled function, around the vectorised member calls)."""
    patched = []
    try:
        for layer in layers:
            if "call" in vars(layer):
                continue
            call = _call_for(layer)
            object.__setattr__(layer, "call", call.__get__(layer))
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
