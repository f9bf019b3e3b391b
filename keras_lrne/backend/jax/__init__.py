"""JAX implementation of the backend function set (see `keras_lrne.backend`)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

NAME = "jax"


def quiet_vectorization():
    """Nothing to quiet: `jax.vmap` logs no notices while a member map is traced."""
    return contextlib.nullcontext()


def compile(fn):
    """Compiles `fn` with `jax.jit`; a fixed signature of arrays never retraces."""
    return jax.jit(fn)


def compile_fixed(fn):
    """Like `compile`, for a function always called with the same signature
    (`jax.jit`'s dispatch is already cheap)."""
    return jax.jit(fn)


def compile_random(fn):
    """Compiles a function dominated by random-number generation (`jax.jit` too)."""
    return jax.jit(fn)


def compile_expanding(fn):
    """Compiles a function that builds population members from seeds and evaluates
    them (`jax.jit`: one program; `barrier` keeps the members bit-identical to those
    every other path builds)."""
    return jax.jit(fn)


def compile_chunk(fn):
    """Compiles the evaluation of one chunk of members (`jax.jit`; inlined when called
    from another compiled function)."""
    return jax.jit(fn)


def draw_per_seed(fn, shape, dtype):
    """`draw(seeds)`: `fn(seed)` (a random draw of `shape` from one int32 seed) for
    every seed, stacked: `jax.vmap`, not compiled as a whole (compiled, XLA would fuse
    the draw's scaling and round differently from the eager draw of one member)."""
    del shape, dtype

    def draw(seeds):
        return jax.vmap(fn)(jnp.asarray(seeds))

    return draw


def fold(body, count, init):
    """`for i in range(count): value = body(i, value)` (`jax.lax.fori_loop`)."""
    return jax.lax.fori_loop(0, count, body, init)


def weighted_outer_sum(weights, left, right):
    """`sum_i weights[i] * left[i] @ transpose(right[i])` for `left (P, m, r)` and
    `right (P, n, r)` (XLA contracts the einsum without building `(P, m, n)`)."""
    return jnp.einsum("i,imr,inr->mn", weights, left, right)


def barrier(x):
    """Stops XLA from fusing across `x` (no fused multiply-add through it), so a
    computation gives bit-identical results whatever the population size it was
    compiled for."""
    return jax.lax.optimization_barrier(x)


def seeded_normal(seeds, salt, shape, dtype="float32"):
    seeds = jnp.asarray(seeds, jnp.uint32)

    def one(seed):
        key = jax.random.fold_in(jax.random.key(seed), int(salt))
        return jax.random.normal(key, tuple(shape), dtype=dtype)

    return jax.vmap(one)(seeds)


def block(tree):
    """Waits until asynchronously dispatched work producing `tree` has finished."""
    return jax.block_until_ready(tree)


def to_numpy(x):
    return np.asarray(jax.device_get(x))


def device_memory_bytes():
    """Free memory of the first accelerator in bytes (`memory_stats()`'s `bytes_limit`
    minus `bytes_in_use`), or None on CPU."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # pragma: no cover - depends on the runtime
        stats = {}
    limit = int(stats.get("bytes_limit", 16 * 2**30))
    return max(0, limit - int(stats.get("bytes_in_use", 0)))


def map_chunks(fn, stacked, out_shape, dtype="float32"):
    """Applies `fn` to the slices along the leading axis of `stacked`, in sequence."""
    del out_shape, dtype
    return jax.lax.map(lambda chunk: fn(list(chunk)), stacked)


def apply_optimizer(optimizer, variables, optimizer_values, grads, values):
    """One step of a built Keras `optimizer` as a pure function (usable inside `compile`):
    returns `(new_values, new_optimizer_values)`. `variables` are the variables the
    optimizer was built for (unused here: JAX applies it statelessly)."""
    return optimizer.stateless_apply(list(optimizer_values), list(grads), list(values))


from keras_lrne.backend.jax.distribution import (  # noqa: E402,F401
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
