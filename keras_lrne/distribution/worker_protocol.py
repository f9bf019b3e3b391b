"""How Ray workers rebuild a strategy's members from seeds: one adapter per strategy.

A worker (`keras_lrne.distribution.RayWorkers`) keeps a small state of its own (e.g. the
GA's current survivors, OpenES's mean) that it advances from per-generation payloads,
and builds the members it evaluates from per-member payloads: only these (seeds and
indices) travel, never weights. The payloads are computed on the coordinator from the
lineage `records` (`records[name][g]` describes population `g + 1`). Members built in a
worker equal those of `strategy.ask` bit for bit, because the adapters build them with
the strategies' own row operators (`GA.row_builder`, `OpenES.operators`).

A strategy of your own runs in workers when it returns a `WorkerProtocol` from a
`worker_protocol()` method.
"""

import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne.strategies import GA, OpenES
from keras_lrne.strategies.base import as_specs


class WorkerProtocol:
    """Base class of the adapters: what travels to workers, and what they do with it.

    Args:
        strategy: the strategy whose members the workers build.
    """

    def __init__(self, strategy):
        self.strategy = strategy

    def worker_init(self, specs, seed):
        """A worker's state before population 0 (see `worker_sync`). The protocol of a
        strategy that `starts_from_weights` also takes `start=`, the run's starting
        weights (sent to each worker once, with the model)."""
        raise NotImplementedError

    def sync_payload(self, records, generation):
        """What a worker that can build population `generation - 1` needs to build
        population `generation` (`generation >= 1`): a small picklable object."""
        raise NotImplementedError

    def worker_sync(self, worker_state, payload):
        """Applies a `sync_payload`; returns the worker's next state."""
        raise NotImplementedError

    def member_payload(self, records, generation, members):
        """What a worker needs to build members `members` (indices) of population
        `generation`."""
        raise NotImplementedError

    def worker_members(self, worker_state, payload):
        """The members a `member_payload` describes: one `(len(members), *shape)`
        tensor per spec."""
        raise NotImplementedError


class GAProtocol(WorkerProtocol):
    """The GA in workers: a worker holds the survivors of the current population (its
    first `num_parents` members) and builds any member from them, a survivor as it is,
    a child as its parent plus the noise of its seed. Payloads are `(kind, source,
    seeds)`: kind "initial" for members of the initial population (source: member ids),
    else "survivors" (source: positions among the survivors)."""

    def _payload(self, records, generation, rows):
        if generation == 0:
            return ("initial", np.asarray(rows, np.int32), None)
        g = generation - 1
        return ("survivors", *self.strategy.row_sources(records["parents"][g],
                                                        records["seeds"][g], rows))

    def worker_init(self, specs, seed):
        specs = as_specs(specs)
        builder = lrne_backend.get().compile_random(self.strategy.row_builder(specs))
        return {"specs": specs, "seed": int(seed), "build": builder, "survivors": None}

    def sync_payload(self, records, generation):
        # The survivors of population `generation` are rows of population
        # `generation - 1`, built from its own survivors.
        rows = np.asarray(records["parents"][generation - 1][: self.strategy.num_parents])
        return self._payload(records, generation - 1, rows)

    def worker_sync(self, worker_state, payload):
        return dict(worker_state, survivors=self.worker_members(worker_state, payload))

    def member_payload(self, records, generation, members):
        return self._payload(records, generation, members)

    def worker_members(self, worker_state, payload):
        kind, source, row_seeds = payload
        if kind == "initial":
            members = [genome.initial_member(worker_state["specs"], worker_state["seed"], int(m))
                       for m in source]
            return [ops.convert_to_tensor(np.stack([m[j] for m in members]))
                    for j in range(len(members[0]))]
        return list(worker_state["build"](worker_state["survivors"], source, row_seeds))


class OpenESProtocol(WorkerProtocol):
    """OpenES in workers: a worker holds the mean and the optimizer's values and replays
    each generation's update from its noise seeds and shaped fitness; members are
    regenerated from the noise seeds of their generation (derived from the run seed)."""

    def worker_init(self, specs, seed):
        operators, mean, values, optimizer = self.strategy.operators(as_specs(specs), seed)
        return {"ops": operators, "optimizer": optimizer, "mean": mean, "values": values,
                "seed": int(seed)}

    def sync_payload(self, records, generation):
        g = generation - 1
        return (np.asarray(records["noise_seeds"][g]), np.asarray(records["weights"][g]))

    def worker_sync(self, worker_state, payload):
        noise_seeds, weights = payload
        mean, values = worker_state["ops"][2](worker_state["mean"], worker_state["values"],
                                              noise_seeds, weights)
        return dict(worker_state, mean=list(mean), values=list(values))

    def member_payload(self, records, generation, members):
        return (int(generation), np.asarray(members, np.int32))

    def worker_members(self, worker_state, payload):
        generation, members = payload
        strategy = self.strategy
        seeds, signs = strategy.member_seeds(strategy.noise_seeds(worker_state["seed"],
                                                                  generation))
        # The mean (member `population_size` with `mean_evaluation`) is sign 0: no noise.
        size = strategy.population_size
        inside = np.minimum(members, size - 1)
        signs = np.where(members < size, signs[inside], 0).astype(np.int32)
        return list(worker_state["ops"][1](worker_state["mean"], seeds[inside], signs))


def protocol_for(strategy):
    """The `WorkerProtocol` of `strategy` (its own `worker_protocol()`, else the
    built-in adapter of `GA` and `OpenES`).

    Raises:
        NotImplementedError: naming the strategy, when it has none.
    """
    own = getattr(strategy, "worker_protocol", None)
    if callable(own):
        return own()
    if isinstance(strategy, GA):
        return GAProtocol(strategy)
    if isinstance(strategy, OpenES):
        return OpenESProtocol(strategy)
    raise NotImplementedError(
        f"{type(strategy).__name__} cannot evaluate in remote workers (RayWorkers): it "
        "has no worker protocol. Give it a `worker_protocol()` method returning a "
        "`keras_lrne.distribution.worker_protocol.WorkerProtocol`."
    )
