"""The compact record of a run: who every member came from, and with which seed."""

import io
import json

import numpy as np


class Lineage:
    """Per generation, each member's (parent index, mutation seed).

    Generation 0 is the initial population: member `i` is the `i`-th independent
    initialisation of the run seed. Population `g + 1` was made from population `g`:
    member `i` of it is member `parents[g][i]` of population `g`, plus Gaussian noise
    drawn from `seeds[g][i]` (or unchanged when the seed is -1, as for elites). Four bytes
    of parent and four of seed per member are all that is needed to rebuild any member
    (see `keras_lrne.Model.rebuild_member`).

    Args:
        seed: the run seed.
        population_size: members per generation.
        settings: optional JSON-serialisable dict stored with the record (e.g. the
            strategy config).
    """

    def __init__(self, seed, population_size, settings=None):
        self.seed = int(seed)
        self.population_size = int(population_size)
        self.settings = dict(settings or {})
        self.parents = []
        self.seeds = []

    @property
    def num_generations(self):
        """Number of populations recorded, including the initial one."""
        return len(self.parents) + 1

    def record(self, parents, seeds):
        """Appends how the next population was made from the current one."""
        parents = np.asarray(parents, np.int32)
        seeds = np.asarray(seeds, np.int32)
        if parents.shape != (self.population_size,) or seeds.shape != parents.shape:
            raise ValueError(
                f"Expected parents and seeds of shape ({self.population_size},). "
                f"Received: {parents.shape} and {seeds.shape}"
            )
        self.parents.append(parents)
        self.seeds.append(seeds)

    def chain(self, generation, member):
        """Returns `(initial_member, seeds)`: the root and the mutation seeds applied in order."""
        if not 0 <= generation < self.num_generations:
            raise ValueError(
                "Received an invalid value for `generation`, expected 0 <= generation < "
                f"{self.num_generations}. Received: generation={generation}"
            )
        if not 0 <= member < self.population_size:
            raise ValueError(
                "Received an invalid value for `member`, expected 0 <= member < "
                f"{self.population_size}. Received: member={member}"
            )
        seeds = []
        for g in range(generation - 1, -1, -1):
            seed = int(self.seeds[g][member])
            if seed >= 0:
                seeds.append(seed)
            member = int(self.parents[g][member])
        return member, seeds[::-1]

    def to_bytes(self):
        """Serialises the lineage to a compact `.npz` byte string."""
        buffer = io.BytesIO()
        header = {"seed": self.seed, "population_size": self.population_size,
                  "settings": self.settings}
        np.savez_compressed(
            buffer,
            header=np.frombuffer(json.dumps(header).encode(), np.uint8),
            parents=np.asarray(self.parents, np.int32).reshape(-1, self.population_size),
            seeds=np.asarray(self.seeds, np.int32).reshape(-1, self.population_size),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data):
        """Inverse of `to_bytes`."""
        with np.load(io.BytesIO(data)) as npz:
            header = json.loads(bytes(npz["header"]).decode())
            lineage = cls(header["seed"], header["population_size"], header["settings"])
            for parents, seeds in zip(npz["parents"], npz["seeds"]):
                lineage.record(parents, seeds)
        return lineage
