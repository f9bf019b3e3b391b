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

    def save(self, filepath):
        """Writes the lineage to `filepath` (a compact `.npz`, see `to_bytes`)."""
        with open(filepath, "wb") as f:
            f.write(self.to_bytes())
        return filepath

    @classmethod
    def load(cls, filepath):
        """Reads a lineage file written by `save` (or a run's `lineage.npz`).

        Raises:
            ValueError: if the file is not a keras-lrne lineage.
        """
        with open(filepath, "rb") as f:
            data = f.read()
        try:
            return cls.from_bytes(data)
        except Exception as error:
            raise ValueError(
                f"{filepath!r} is not a keras-lrne lineage file ({type(error).__name__}: "
                f"{error})."
            ) from None

    def rebuild_member(self, model, generation, member, assign=True):
        """Rebuilds one member of the recorded run into `model`, without the run.

        Works in a fresh process on any built model with the run's architecture (e.g.
        the preset it used, or the run's `model.keras`): the member is redrawn from the
        run seed and its chain of mutation seeds, bit-exact on the same backend.

        Args:
            model: a built Keras model with the same evolvable variables as the run's.
            generation: population index (0 = initial population).
            member: member index within that population.
            assign: load the member into `model`'s variables.

        Returns:
            A list of numpy arrays, one per evolvable trainable variable, in
            `model.trainable_variables` order.

        Example:

        >>> lineage = keras_lrne.Lineage.load("lrne_output/lm/lineage.npz")
        >>> model = keras_lrne.presets.language_model("factorized", vocab_size=2048,
        ...                                           sequence_length=64)
        >>> weights = lineage.rebuild_member(model, generation=100, member=0)
        """
        from keras_lrne import population as pop
        from keras_lrne import strategies

        if not getattr(model, "built", False) or not model.trainable_variables:
            raise ValueError(
                "Received an invalid value for `model`, expected a built model with "
                f"trainable variables. Received: model={getattr(model, 'name', model)!r}"
            )
        settings = dict(self.settings)
        name = settings.pop("strategy", "GA")
        settings.pop("evolvable_shapes", None)
        strategy = getattr(strategies, name).from_config(settings)
        specs = pop.collect_variable_specs(
            model, freeze_normalization=strategy.config.freeze_normalization
        )
        shapes = [list(s.shape) for s in specs if s.evolvable]
        recorded = self.settings.get("evolvable_shapes")
        if recorded is not None and recorded != shapes:
            raise ValueError(
                "The model's evolvable variables differ from the run's: the lineage records "
                f"shapes {recorded}, the model has {shapes}."
            )
        functions = pop.PopulationFunctions(model, specs, None, strategy.noise_stds(specs), 1)
        root, seeds = self.chain(generation, member)
        return pop.rebuild_values(model, specs, functions, self.seed, root, seeds,
                                  assign=assign)

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
