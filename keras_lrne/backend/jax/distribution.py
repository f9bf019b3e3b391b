"""JAX population parallelism: a 1-D `jax.sharding.Mesh` over the population axis.

Population tensors live as `jax.Array`s sharded along their leading axis
(`NamedSharding(mesh, PartitionSpec("population"))`); a per-device function is
`jax.jit(jax.shard_map(...))`: every device runs the same compiled body on its own
members, and nothing moves unless the body asks for it.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "population"

#: A population that stays sharded between generations (reproduction runs per device).
KEEPS_POPULATION_SHARDED = True


def _name(device):
    return f"{device.platform}:{device.id}"


def list_devices():
    """Local device names by type, best type first: `{"gpu": [...], "cpu": [...]}`."""
    found = {}
    for device in jax.local_devices():
        found.setdefault(device.platform, []).append(_name(device))
    try:  # CPU devices exist beside accelerators; list them too
        for device in jax.local_devices(backend="cpu"):
            found.setdefault("cpu", [])
            if _name(device) not in found["cpu"]:
                found["cpu"].append(_name(device))
    except RuntimeError:  # pragma: no cover - no CPU client
        pass
    return dict(sorted(found.items(), key=lambda item: item[0] == "cpu"))


def _device(name):
    platform, index = re.fullmatch(r"([a-z]+):(\d+)", name).groups()
    for device in jax.local_devices(backend=platform):
        if device.id == int(index):
            return device
    raise ValueError(name)  # pragma: no cover - names are checked first


class PopulationMesh:
    """The backend handle of a `PopulationParallel`: its mesh and sharding."""

    def __init__(self, names):
        self.devices = [_device(name) for name in names]
        self.size = len(self.devices)
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.sharded = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())


def population_handle(names):
    return PopulationMesh(names)


def _pad(values, rows):
    size = values.shape[0]
    if size == rows:
        return values
    repeats = -(-rows // size)
    return jnp.concatenate([values] * repeats, axis=0)[:rows]


def per_device(fn, handle, sharded, rows=None, expands=False):
    """Compiles `fn` to run on every device of `handle` on its slice of the population.

    Arguments flagged in `sharded` (tensors or lists of tensors with a leading population
    axis) are split along that axis, after being padded to `rows` rows by repeating
    members (`rows` must be a multiple of the device count; None: no padding); the other
    arguments are replicated. `fn` returns a tensor (or list) whose leading axis is
    concatenated in device order. `expands` (a body that builds members from a recipe)
    changes nothing on JAX: everything is one program.
    """
    del expands
    in_specs = tuple(P(AXIS) if s else P() for s in sharded)
    body = jax.shard_map(fn, mesh=handle.mesh, in_specs=in_specs, out_specs=P(AXIS),
                         check_vma=False)

    def padded(*args):
        if rows is not None:
            args = [jax.tree.map(lambda v: _pad(v, rows), a) if s else a
                    for a, s in zip(args, sharded)]
        return body(*args)

    return jax.jit(padded)


def unscale_replica_loss(value, loss):
    """Identity: Keras scales losses by the replica count only under `tf.distribute`."""
    return value


def shard(tree, handle):
    """Places `tree` (leading axis divisible by the device count) sharded over `handle`."""
    return jax.device_put(tree, handle.sharded)


def replicate(x, handle):
    """Inside a compiled function: `x` replicated on every device of `handle`."""
    return jax.lax.with_sharding_constraint(x, handle.replicated)


def compile_sharded_output(fn, handle):
    """`jax.jit(fn)` whose outputs are sharded along the population axis."""
    return jax.jit(fn, out_shardings=handle.sharded)


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?\S+\s+=\s+(.*?)\s+(all-gather|all-reduce|all-to-all|"
    r"collective-permute|reduce-scatter)(-start)?\("
)
_SHAPE = re.compile(r"(f64|f32|bf16|f16|s64|s32|u32|s8|u8|pred)\[([\d,]*)\]")
_BYTES = {"f64": 8, "s64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s8": 1, "u8": 1, "pred": 1}


def collective_bytes(jitted, *args):
    """Bytes the collectives of one call of `jitted(*args)` produce, per device, read
    from the compiled program (all-gather, all-reduce, all-to-all, collective-permute
    and reduce-scatter results), and the number of collectives."""
    text = jitted.lower(*args).compile().as_text()
    total = count = 0
    for line in text.splitlines():
        match = _COLLECTIVE.search(line)
        if not match or "-done" in line:
            continue
        count += 1
        for dtype, dims in _SHAPE.findall(match.group(1)):
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            total += size * _BYTES[dtype]
    return total, count
