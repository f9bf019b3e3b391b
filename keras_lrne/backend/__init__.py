"""Backend dispatch: the only place that knows which Keras backend is active.

Everything outside `keras_lrne/backend/` calls `keras_lrne.backend.get()` and uses
the small function set every backend module provides:

- `compile(fn)`: compile a pure function of tensors (XLA via `tf.function(jit_compile=True)`
  on TensorFlow, `jax.jit` on JAX).
- `compile_fixed(fn)`: `compile` for a function always called with one signature (the
  cheapest call; on TensorFlow a call with another signature raises an error).
- `compile_random(fn)`: compile a function dominated by random-number generation (the
  fastest way for the backend; not XLA on TensorFlow CPU).
- `compile_expanding(fn)`: compile a function that expands population members from a
  recipe (seeds: random kernels) and evaluates them chunk by chunk with functions made
  by `compile_chunk(fn)` (on TensorFlow: a graph around XLA chunk evaluations, so that
  members are drawn by the same kernels as everywhere else; on JAX: one `jax.jit`).
- `map_chunks(fn, stacked, out_shape)`: a sequential map over the leading axis.
- `quiet_vectorization()`: a context for tracing a vectorised member map; drops the
  backend's notices that ask nothing of the user (TensorFlow's while_loop fallback for
  `Bitcast`, which `keras.ops.argmax` brings in).
- `seeded_normal(seeds, salt, shape, dtype)`: one standard-normal tensor of `shape` per
  entry of the int32 vector `seeds`, stacked to `(len(seeds), *shape)`; the values of row
  `i` depend only on `(seeds[i], salt)`, so any member's noise can be regenerated alone.
- `draw_per_seed(fn, shape, dtype)`: `draw(seeds)` stacks `fn(seed)` for every seed,
  each the numbers `fn` draws for that seed alone (members' initial values at once).
- `fold(body, count, init)`: a sequential loop, one iteration's memory at a time.
- `weighted_outer_sum(weights, left, right)`: `sum_i w_i left_i @ right_i^T` without
  building the `P` products (OpenES's low-rank update).
- `barrier(x)`: keeps the compiler from fusing across `x`, so results do not depend on
  the shapes a function was compiled for.
- `block(tree)`: waits for asynchronously dispatched work (JAX) to finish.
- `to_numpy(x)`: a host copy (waits for the device).
- `device_memory_bytes()`: free memory of the default accelerator, or None on CPU.
- `apply_optimizer(optimizer, variables, optimizer_values, grads, values)`: one step of a
  built Keras optimizer as a function of tensors, inside a compiled function.
"""

import keras

_MODULE = None


def get():
    """Returns the backend module matching `keras.config.backend()`."""
    global _MODULE
    name = keras.config.backend()
    if _MODULE is None or name != _MODULE.NAME:
        if name == "tensorflow":
            from keras_lrne.backend import tensorflow as module
        elif name == "jax":
            from keras_lrne.backend import jax as module
        else:
            raise RuntimeError(
                "keras-lrne supports the `tensorflow` and `jax` Keras backends. "
                f"Received: KERAS_BACKEND={name}"
            )
        _MODULE = module
    return _MODULE
