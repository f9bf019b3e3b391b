"""TensorFlow population parallelism: `tf.distribute.MirroredStrategy` over local devices.

A per-device function is one graph (`tf.function`) that splits the population on the
host and runs the same XLA-compiled body in every replica (`strategy.run`) on its own
slice; the replicas' results are concatenated in device order. The population itself
lives on the default device between generations (TensorFlow has no sharded tensor that
its XLA-compiled functions take as it is), so each replica receives its slice every call.
"""

import re

import tensorflow as tf

#: The population lives on the default device; each call sends the replicas their slices.
KEEPS_POPULATION_SHARDED = False


def _name(device):
    kind, index = re.search(r"device:([A-Z]+):(\d+)$", device.name).groups()
    return f"{kind.lower()}:{index}"


def list_devices():
    """Local logical device names by type, best type first: `{"gpu": [...], "cpu": [...]}`."""
    found = {}
    for kind in ("GPU", "CPU"):
        names = [_name(d) for d in tf.config.list_logical_devices(kind)]
        if names:
            found[kind.lower()] = names
    return found


class ReplicaDevices:
    """The backend handle of a `PopulationParallel`: a `MirroredStrategy`."""

    def __init__(self, names):
        self.names = list(names)
        self.size = len(self.names)
        self.strategy = tf.distribute.MirroredStrategy(
            [f"/device:{n.split(':')[0].upper()}:{n.split(':')[1]}" for n in self.names],
            # Only the replicas' results are gathered (by concatenation), never reduced.
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )


def population_handle(names):
    return ReplicaDevices(names)


def _pad(values, rows):
    size = values.shape[0]
    if size == rows:
        return values
    repeats = -(-rows // size)
    return tf.concat([values] * repeats, axis=0)[:rows]


def per_device(fn, handle, sharded, rows=None, expands=False):
    """Compiles `fn` to run in every replica of `handle` on its slice of the population.

    Arguments flagged in `sharded` (tensors or lists of tensors with a leading population
    axis) are padded to `rows` rows by repeating members (`rows` a multiple of the
    replica count; None: no padding) and split along that axis; the other arguments are
    given whole to every replica. `fn` (XLA-compiled; with `expands`, a graph function
    that expands members and calls XLA-compiled chunk evaluations, see
    `compile_expanding`) returns a tensor whose leading axis is concatenated in replica
    order.
    """
    from keras_lrne.backend.tensorflow import tf_function

    body = tf_function(fn, jit_compile=not expands)
    strategy, count = handle.strategy, handle.size

    def run(*args):
        parts = []
        for arg, split in zip(args, sharded):
            if not split:
                # Read variables here: an XLA body cannot read another device's variable.
                # (None stays None: e.g. the targets of a fitness without any.)
                parts.append(None if arg is None
                             else tf.nest.map_structure(tf.convert_to_tensor, arg))
                continue
            flat = tf.nest.flatten(arg)
            if rows is not None:
                flat = [_pad(v, rows) for v in flat]
            pieces = [tf.split(v, count) for v in flat]
            parts.append([tf.nest.pack_sequence_as(arg, [p[i] for p in pieces])
                          for i in range(count)])

        def replica():
            context = tf.distribute.get_replica_context()
            index = tf.get_static_value(context.replica_id_in_sync_group)
            return body(*[p[index] if s else p for p, s in zip(parts, sharded)])

        out = strategy.run(replica)
        return tf.concat(strategy.experimental_local_results(out), axis=0)

    return tf_function(run)


#: Reductions for which Keras divides a loss by the replica count inside a replica.
_SCALED_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def unscale_replica_loss(value, loss):
    """Undoes Keras' division of a `keras.losses.Loss`'s reduced value by the number of
    replicas in sync, which it applies inside `tf.distribute` replicas (for averaging
    gradients over them): a member's loss must not depend on the device count. Exact
    for power-of-two replica counts; within one float32 rounding otherwise."""
    import keras

    if isinstance(loss, keras.losses.Loss) and loss.reduction in _SCALED_REDUCTIONS:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            value = value * tf.cast(replicas, value.dtype)
    return value


def shard(tree, handle):
    """The population stays on the default device (see the module docstring)."""
    return tree


def replicate(x, handle):
    return x


def compile_sharded_output(fn, handle):
    from keras_lrne.backend.tensorflow import compile_fixed

    return compile_fixed(fn)


def collective_bytes(jitted, *args):
    """Not measurable from a TensorFlow graph: None (see `population_bytes`)."""
    return None, None
