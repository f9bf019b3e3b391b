"""What `FactorizedDense` and `FactorizedConv2D` share: a kernel stored as two factors
`kernel_u (fan_in, rank)` and `kernel_v (rank, units)`, an optional bias, an activation,
and their arguments, weights and config."""

import keras

from keras_lrne.layers import _init


def set_factor_arguments(layer, activation, use_bias, kernel_u_initializer,
                         kernel_v_initializer, bias_initializer):
    """Validates and stores the shared constructor arguments on `layer`."""
    layer.activation = keras.activations.get(activation)
    layer.use_bias = _init.validate_bool("use_bias", use_bias)
    layer.kernel_u_initializer = _init.get_initializer(
        "kernel_u_initializer", kernel_u_initializer
    )
    layer.kernel_v_initializer = _init.get_initializer(
        "kernel_v_initializer", kernel_v_initializer
    )
    layer.bias_initializer = keras.initializers.get(bias_initializer)


def add_factor_weights(layer, fan_in, units, std_u, std_v):
    """Adds `kernel_u (fan_in, rank)`, `kernel_v (rank, units)` and, with `use_bias`,
    `bias (units,)` to `layer` (in `build`). An "auto" factor initializer draws from
    `N(0, std_u)` (U) or `N(0, std_v)` (V); the initializers used are kept in
    `layer._resolved_initializers` (for `evolution_info`)."""
    u_init = layer.kernel_u_initializer
    if u_init == _init.AUTO:
        u_init = keras.initializers.RandomNormal(stddev=std_u)
    v_init = layer.kernel_v_initializer
    if v_init == _init.AUTO:
        v_init = keras.initializers.RandomNormal(stddev=std_v)
    layer._resolved_initializers = {"kernel_u": u_init, "kernel_v": v_init}
    layer.kernel_u = layer.add_weight(
        name="kernel_u", shape=(fan_in, layer.rank), initializer=u_init
    )
    layer.kernel_v = layer.add_weight(
        name="kernel_v", shape=(layer.rank, units), initializer=v_init
    )
    if layer.use_bias:
        layer._resolved_initializers["bias"] = layer.bias_initializer
        layer.bias = layer.add_weight(
            name="bias", shape=(units,), initializer=layer.bias_initializer
        )
    else:
        layer.bias = None


def factor_config(layer):
    """The shared part of the layer's `get_config()`: activation, bias and
    initializers."""
    return {
        "activation": keras.activations.serialize(layer.activation),
        "use_bias": layer.use_bias,
        "kernel_u_initializer": _init.serialize_initializer(layer.kernel_u_initializer),
        "kernel_v_initializer": _init.serialize_initializer(layer.kernel_v_initializer),
        "bias_initializer": keras.initializers.serialize(layer.bias_initializer),
    }


class FactorPairMixin:
    """`evolution_info` of a layer whose weights `add_factor_weights` added."""

    def evolution_info(self):
        """Mutation metadata for this layer's own trainable variables.

        Returns:
            Dict `{variable_name: {"init_std": float, "factor": bool}}` for
            `kernel_u`, `kernel_v` (factors) and, if used, `bias` (not a factor;
            a zero-initialised bias reports the Kaiming std `sqrt(2 / n)` of its `n`
            outputs: `units` or `filters`).
        """
        return _init.factor_evolution_info(
            self, ("kernel_u", "kernel_v", "bias"), ("kernel_u", "kernel_v")
        )
