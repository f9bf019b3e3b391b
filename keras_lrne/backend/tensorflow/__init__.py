"""TensorFlow implementation of the backend function set (see `keras_lrne.backend`)."""

import contextlib
import functools
import logging

import numpy as np
import tensorflow as tf

NAME = "tensorflow"

#: What TensorFlow's vectoriser (pfor, behind `keras.ops.vectorized_map`) logs when it
#: converts an op it has no vectorised rule for with a loop over members. `Bitcast` is
#: the one a fitness meets through `keras.ops.argmax` (its negative-zero fix calls
#: `signbit`); the notice is logged at every trace and asks nothing of the user.
_BITCAST_FALLBACK = "Using a while_loop for converting Bitcast "


class _DropBitcastFallback(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith(_BITCAST_FALLBACK)


@contextlib.contextmanager
def quiet_vectorization():
    """While a vectorised member map is traced: drops TensorFlow's warning
    `Using a while_loop for converting Bitcast ...` (and only that one) from the
    `tensorflow` logger; any other warning still shows."""
    logger = tf.get_logger()
    dropped = _DropBitcastFallback()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


def tf_function(fn, jit_compile=None):
    """`tf.function(fn)` (no autograph, exact shapes), counted apart from other runs' functions.

    TensorFlow warns about "retracing" when one Python function is traced 5 times in its
    last 10 calls, and it counts the calls of every `tf.function` made from the same code
    object together: the fresh closures of every `evolve()` run (one trace each) add up,
    and from the fifth run in a process each run printed two warnings. Wrapped in a
    `functools.partial` (which has no code object), each compiled function is counted on
    its own, so a real retrace of one run's function still warns.
    """
    return tf.function(functools.partial(fn), jit_compile=jit_compile, autograph=False,
                       reduce_retracing=False)


def compile(fn):
    """Compiles `fn` with XLA; a fixed signature of tensors never retraces."""
    return tf_function(fn, jit_compile=True)


class _FixedSignature:
    """A compiled function called with one signature only, through its concrete
    function: that skips `tf.function`'s per-call argument matching (a sizeable share of
    a small policy call: benchmarks/README.md)."""

    def __init__(self, fn):
        self._function = compile(fn)
        self._concrete = None

    def __call__(self, *args):
        if self._concrete is None:
            self._concrete = self._function.get_concrete_function(*args)
        return self._concrete(*args)


def compile_fixed(fn):
    """Like `compile`, for a function that is always called with the same signature
    (shapes, dtypes and structure); a call with another signature raises an error."""
    return _FixedSignature(fn)


def compile_random(fn):
    """Compiles a function dominated by random-number generation.

    TensorFlow's own multi-threaded Philox kernels are much faster on CPU than XLA's
    (benchmarks/README.md), so this is a graph function without XLA; it still never
    retraces for a fixed signature.
    """
    return tf_function(fn, jit_compile=False)


def compile_expanding(fn):
    """Compiles a function that builds population members from seeds (random kernels)
    and evaluates them with functions made by `compile_chunk`: a graph function
    without XLA (TensorFlow's XLA random kernels draw other numbers than its graph
    kernels, and members must be the ones every other path builds), whose XLA-compiled
    chunk evaluations run inside it. It never retraces for a fixed signature."""
    return tf_function(fn, jit_compile=False)


def compile_chunk(fn):
    """Compiles the evaluation of one chunk of members with XLA (also callable from a
    `compile_expanding` function, where it runs as one XLA cluster)."""
    return compile(fn)


def draw_per_seed(fn, shape, dtype):
    """`draw(seeds)`: `fn(seed)` (a random draw of `shape` from one int32 seed) for
    every seed, stacked; one graph function (TensorFlow's graph kernels draw the numbers
    its eager calls draw)."""
    def draw(seeds):
        return tf.map_fn(fn, seeds, fn_output_signature=tf.TensorSpec(tuple(shape), dtype),
                         parallel_iterations=16)

    return tf_function(draw, jit_compile=False)


def fold(body, count, init):
    """`for i in range(count): value = body(i, value)`, one iteration at a time (a
    `tf.while_loop` runs 10 in parallel by default, holding 10 iterations' memory)."""
    _, value = tf.while_loop(lambda i, _: i < count,
                             lambda i, value: (i + 1, body(i, value)),
                             (tf.constant(0), init), parallel_iterations=1)
    return value


def weighted_outer_sum(weights, left, right):
    """`sum_i weights[i] * left[i] @ transpose(right[i])` for `left (P, m, r)` and
    `right (P, n, r)`, as one `(m, P r) @ (P r, n)` product. (`tf.einsum("i,imr,inr->mn")`
    builds the `(P, m, n)` products first: 1 GiB and 3.6 s at P=4,096 for the LM's
    embedding, where this takes twice the factors' memory.)"""
    count, m, r = left.shape
    n = right.shape[1]
    scaled = tf.transpose(left * weights[:, None, None], (1, 0, 2))
    right = tf.transpose(right, (0, 2, 1))  # (P, r, n): rows in the order of `scaled`
    return tf.matmul(tf.reshape(scaled, (m, count * r)), tf.reshape(right, (count * r, n)))


def barrier(x):
    """No-op: random functions are not XLA-compiled on TensorFlow (see `compile_random`)."""
    return x


def seeded_normal(seeds, salt, shape, dtype="float32"):
    seeds = tf.convert_to_tensor(seeds, tf.int32)
    salt = tf.constant(int(salt), tf.int32)

    def one(seed):
        return tf.random.stateless_normal(
            shape, seed=tf.stack([seed, salt]), dtype=dtype, alg="philox"
        )

    return tf.map_fn(
        one, seeds, fn_output_signature=tf.TensorSpec(tuple(shape), dtype), parallel_iterations=16
    )


def block(tree):
    """TensorFlow runs eagerly-called functions synchronously: nothing to wait for."""
    return tree


def to_numpy(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def device_memory_bytes():
    """Free memory of the first GPU in bytes (its memory limit minus what TensorFlow's
    allocator holds, `tf.config.experimental.get_memory_info`), or None without a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    try:
        limit = tf.config.experimental.get_device_details(gpus[0]).get("memory_limit")
    except Exception:  # pragma: no cover - depends on the driver
        limit = None
    limit = int(limit) if limit else 16 * 2**30
    try:
        used = int(tf.config.experimental.get_memory_info("GPU:0").get("current", 0))
    except Exception:  # pragma: no cover - not initialised yet, or no such device
        used = 0
    return max(0, limit - used)


def map_chunks(fn, stacked, out_shape, dtype="float32"):
    """Applies `fn` to the slices along the leading axis of `stacked`, in sequence."""
    return tf.map_fn(
        lambda chunk: fn(list(chunk)),
        stacked,
        fn_output_signature=tf.TensorSpec(tuple(out_shape), dtype),
        parallel_iterations=1,
    )


def apply_optimizer(optimizer, variables, optimizer_values, grads, values):
    """One step of a built Keras `optimizer` as a function of tensors (usable inside
    `compile_random`): returns `(new_values, new_optimizer_values)`. TensorFlow has no
    stateless optimizer step (`Optimizer.stateless_apply` is not supported with
    tf.distribute), so the values are loaded into `variables` (the ones the optimizer was
    built for) and the optimizer's own variables, stepped, and read back."""
    for variable, value in zip(variables, values):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_values):
        variable.assign(value)
    optimizer.apply(list(grads), variables)
    return ([tf.identity(v.value) for v in variables],
            [tf.identity(v.value) for v in optimizer.variables])


from keras_lrne.backend.tensorflow.distribution import (  # noqa: E402,F401
    KEEPS_POPULATION_SHARDED,
    collective_bytes,
    compile_sharded_output,
    list_devices,
    per_device,
    population_handle,
    replicate,
    shard,
    unscale_replica_loss,
)
