"""Private helpers shared by the `keras_lrne` layers.

Argument validation, the paper's Kaiming-equivalent factor initialisers, and the
`init_std` estimates reported by `evolution_info()`.
"""

import math
import warnings

import keras
import numpy as np

# Scales that are not `keras.initializers.Initializer` instances ("auto").
AUTO = "auto"


def validate_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a boolean. "
            f"Received: {name}={value!r}"
        )
    return bool(value)


def _deserializing():
    """True while Keras rebuilds a saved object (`keras.saving.load_model`, ...).

    Keras enters its safe-mode scope around every `from_config` it runs; outside
    deserialization the flag is unset (None).
    """
    try:
        from keras.src.saving import serialization_lib
    except ImportError:  # another Keras layout: warn as usual
        return False
    return serialization_lib.in_safe_mode() is not None


def warn_if_not_factorized(layer_name, rank, fan_in, fan_out):
    """Warns when `rank >= min(fan_in, fan_out)`: U @ V then saves nothing.

    Not while a saved model is loaded: whoever made the layer was warned then, and the
    user who loads it did not choose the rank.
    """
    if rank >= min(fan_in, fan_out) and not _deserializing():
        warnings.warn(
            f"Layer '{layer_name}': rank={rank} >= min(fan_in, fan_out)="
            f"{min(fan_in, fan_out)} (fan_in={fan_in}, fan_out={fan_out}); the "
            "factorization U @ V has at least as many parameters as the full "
            "matrix, so this is no factorization.",
            UserWarning,
            stacklevel=3,
        )


def get_initializer(name, value):
    """`keras.initializers.get` that also accepts the string "auto"."""
    if isinstance(value, str) and value == AUTO:
        return AUTO
    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected 'auto' or a Keras "
            f"initializer. Received: {name}={value!r}"
        ) from e


def serialize_initializer(value):
    if isinstance(value, str):
        return value
    return keras.initializers.serialize(value)


def dense_factor_stds(fan_in, fan_out, rank):
    """Stds of `(U, V)` for the paper's Kaiming-equivalent factor init.

    With `x @ U @ V`, `U: (fan_in, rank)`, `V: (rank, fan_out)`:
    - `fan_in <= fan_out`: Var(U) = sqrt(2)/fan_in, Var(V) = sqrt(2)/rank, so
      Var(U @ V) = rank * Var(U) * Var(V) = 2/fan_in (Kaiming).
    - `fan_in > fan_out`: Var(U) = 2/fan_in, Var(V) = 2/rank, so
      Var(U @ V) = 4/fan_in.
    """
    if fan_in <= fan_out:
        var_u = math.sqrt(2.0) / fan_in
        var_v = math.sqrt(2.0) / rank
    else:
        var_u = 2.0 / fan_in
        var_v = 2.0 / rank
    return math.sqrt(var_u), math.sqrt(var_v)


def kaiming_std(shape):
    """Kaiming std `sqrt(2 / fan_in)` of a tensor shape (`fan_in = shape[0]` for 1-D)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        fan_in = 1
    elif len(shape) == 1:
        fan_in = shape[0]
    else:
        fan_in = int(np.prod(shape[:-1]))
    return math.sqrt(2.0 / max(fan_in, 1))


def initializer_std(initializer, shape):
    """Std of the distribution `initializer` draws for `shape`.

    Exact for `RandomNormal`; otherwise estimated by sampling once. Zero (or
    constant) initialisers give the Kaiming std of `shape` (docs/design.md: zero
    initialised tensors use the Kaiming std of their shape).
    """
    if type(initializer) is keras.initializers.RandomNormal:
        std = float(initializer.stddev)
    elif isinstance(
        initializer,
        (keras.initializers.Zeros, keras.initializers.Ones, keras.initializers.Constant),
    ):
        std = 0.0
    else:
        # Sample fresh seeded clones (enough draws for a stable estimate, even for tiny
        # shapes) so the layer's own initializer and its seed are left untouched.
        config = initializer.get_config()
        size = max(1, int(np.prod(shape)))
        samples = []
        for repeat in range(max(1, math.ceil(4096 / size))):
            try:
                clone = initializer.__class__.from_config(
                    {**config, "seed": 1234 + repeat} if "seed" in config else config
                )
            except (TypeError, ValueError, NotImplementedError):  # exotic initialisers
                clone = initializer
            samples.append(
                np.ravel(keras.ops.convert_to_numpy(clone(tuple(shape), dtype="float32")))
            )
        std = float(np.std(np.concatenate(samples)))
    if not std > 0.0 or not math.isfinite(std):
        std = kaiming_std(shape)
    return std


def factor_evolution_info(layer, names, factor_names):
    """`evolution_info()` of a layer that keeps its initializers in
    `layer._resolved_initializers` (keyed by variable name).

    Args:
        layer: the built layer.
        names: attribute names of its own trainable variables (attributes that are None,
            e.g. no bias, are skipped).
        factor_names: names of the low-rank factor variables.

    Returns:
        Dict `{variable_name: {"init_std": float, "factor": bool}}`.
    """
    if not layer.built:
        raise ValueError(
            f"Layer '{layer.name}' must be built before calling `evolution_info()`."
        )
    variables = [getattr(layer, name) for name in names]
    return {
        var.name: {
            "init_std": initializer_std(layer._resolved_initializers[var.name], var.shape),
            "factor": var.name in factor_names,
        }
        for var in variables
        if var is not None
    }
