"""`PopulationParallel`: the population axis split over one host's devices."""

import contextlib
import re

from keras_lrne import backend as lrne_backend
from keras_lrne._validation import is_int

_ACTIVE = []


def distribution():
    """The `PopulationParallel` whose `scope()` is active (inside `evolve()`), or None."""
    return _ACTIVE[-1] if _ACTIVE else None


def _canonical(name):
    """`"GPU:1"`, `"/device:GPU:1"`, `"/job:localhost/replica:0/task:0/device:CPU:0"` ->
    `"gpu:1"`; None for anything else."""
    if not isinstance(name, str):
        return None
    match = re.search(r"(?:^|device:)([A-Za-z]+):(\d+)$", name.strip())
    if match is None:
        return None
    kind = match.group(1).lower()
    return f"{'gpu' if kind == 'cuda' else kind}:{int(match.group(2))}"


class PopulationParallel:
    """Splits the population axis over one host's devices (population parallelism).

    Every device evaluates its share of the members, with the same compiled body and the
    same chunking as one device would (planned from each device's memory); the host keeps
    selection, lineage and callbacks, which need only the P losses. Results do not
    depend on the device count: the same seed gives the same lineage and elite on 1, 2 or
    4 devices. A population that does not divide by the device count is padded with
    copies of its first members, whose losses are dropped.

    - JAX: the devices form a 1-D `jax.sharding.Mesh` with the axis `"population"`;
      population tensors are `jax.Array`s sharded along their first axis
      (`NamedSharding`), evaluation is `jax.jit(jax.shard_map(...))`, and the GA
      reproduces on every device the children it holds: only the chosen parents move
      between devices (when the population divides by the device count).
    - TensorFlow: a `tf.distribute.MirroredStrategy` over the devices; each replica runs
      the same XLA-compiled evaluation on its slice, which it receives every generation
      (the population lives on the first device between generations).
    - Environment tasks: the rollout engine's per-step policy call is split the same way;
      environments still step on the host.

    This is `keras.distribution.DataParallel`'s idea applied to the population instead of
    the batch: `DataParallel` replicates one model's weights and splits the data, so a
    gradient step can average over devices; neuroevolution has one set of weights per
    member and no gradient, so the members are what is split and the data is replicated.
    Keras' distribution API (JAX only) shards a model's own variables, which `evolve()`
    never trains directly, so the population needs a distribution of its own.

    Args:
        devices: None (default) for every local accelerator, or every local CPU device
            when there is none; an integer N for the first N of those; or a list of
            device names such as `["gpu:0", "gpu:1"]` (Keras' naming; TensorFlow names
            such as `"/device:GPU:0"` are accepted too). On CPU, JAX offers several
            devices with `XLA_FLAGS=--xla_force_host_platform_device_count=N` set before
            JAX starts; TensorFlow with `tf.config.set_logical_device_configuration`
            before TensorFlow runs any op (and before `import keras_lrne`).

    Example:

    >>> distribution = keras_lrne.distribution.PopulationParallel()
    >>> model.evolve(task, strategy=strategy, generations=10, distribution=distribution)
    """

    def __init__(self, devices=None):
        available = lrne_backend.get().list_devices()
        best = next(iter(available.values()))
        self._requested = devices
        if devices is None:
            names = list(best)
        elif is_int(devices):
            if not 1 <= devices <= len(best):
                raise ValueError(
                    "Received an invalid value for `devices`, expected a device count from "
                    f"1 to the {len(best)} local {best[0].split(':')[0].upper()} devices. "
                    f"Received: devices={devices!r}"
                )
            names = best[: int(devices)]
        elif isinstance(devices, (list, tuple)) and devices:
            names = []
            known = [n for group in available.values() for n in group]
            for i, device in enumerate(devices):
                name = _canonical(device)
                if name not in known:
                    raise ValueError(
                        f"Received an invalid value for `devices`, element {i} is not a "
                        f"local device (these are: {known}). Received: devices={devices!r}"
                    )
                if name in names:
                    raise ValueError(
                        f"Received an invalid value for `devices`, {device!r} is listed "
                        f"twice. Received: devices={devices!r}"
                    )
                names.append(name)
            if len({n.split(":")[0] for n in names}) > 1:
                raise ValueError(
                    "Received an invalid value for `devices`, expected devices of one type "
                    f"(e.g. all GPUs). Received: devices={devices!r}"
                )
        else:
            raise ValueError(
                "Received an invalid value for `devices`, expected None (all local "
                "accelerators, else all CPU devices), a device count or a non-empty list "
                f"of device names such as ['gpu:0', 'gpu:1']. Received: devices={devices!r}"
            )
        self._devices = names
        self._handle = None

    @property
    def devices(self):
        """The devices' names (e.g. `["cpu:0", "cpu:1"]`), in population order."""
        return list(self._devices)

    @property
    def num_devices(self):
        return len(self._devices)

    @property
    def handle(self):
        """The backend's own object (a JAX mesh, a TensorFlow `MirroredStrategy`)."""
        if self._handle is None:
            self._handle = lrne_backend.get().population_handle(self._devices)
        return self._handle

    @property
    def keeps_population_sharded(self):
        """Whether the population stays split over the devices between generations
        (JAX), rather than on the first device (TensorFlow)."""
        return bool(lrne_backend.get().KEEPS_POPULATION_SHARDED)

    def members_per_device(self, population_size):
        """Members each device evaluates (the population padded to a multiple)."""
        return -(-int(population_size) // self.num_devices)

    def shards_evenly(self, population_size):
        return int(population_size) % self.num_devices == 0

    @contextlib.contextmanager
    def scope(self):
        """Makes this the active distribution (`keras_lrne.distribution.distribution()`):
        functions compiled inside the scope split the population over its devices."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.pop()

    def get_config(self):
        return {"devices": self.devices}

    def __repr__(self):
        return f"PopulationParallel(devices={self.devices!r})"
