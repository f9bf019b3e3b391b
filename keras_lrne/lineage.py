"""The compact record of a run: who every member came from, and with which seed."""

import hashlib
import io
import json
import warnings

import numpy as np

FORMAT = "keras_lrne_lineage"


def _digest(header, parents, seeds):
    """SHA-256 hex digest of the stored header bytes and both arrays (dtypes and shapes too)."""
    h = hashlib.sha256()
    for name, array in (("header", header), ("parents", parents), ("seeds", seeds)):
        array = np.ascontiguousarray(array)
        h.update(f"{name}:{array.dtype.str}{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()


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

        The file's SHA-256 checksum is verified and its contents validated (parents within
        `[0, population_size)`, seeds >= -1, one row of each per generation) before use,
        so a modified seed, mutation rate or parent never silently rebuilds other weights.
        A file written before checksums were added (keras-lrne without a `sha256` entry)
        is still read, after the same validation, with a warning that it cannot be
        verified; `save` it again to add a checksum.

        Raises:
            ValueError: naming the file, if it is not a keras-lrne lineage, is truncated,
                corrupted or modified (checksum mismatch), or holds invalid records.
        """
        with open(filepath, "rb") as f:
            data = f.read()
        return cls._from_bytes(data, f"The lineage file {str(filepath)!r}")

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
        """Serialises the lineage to a compact `.npz` byte string.

        Entries: `header` (UTF-8 JSON: format, seed, population size, settings), `parents`
        and `seeds` (int32, one row per generation) and `sha256`, the hex SHA-256 of the
        other three (see `load`).
        """
        buffer = io.BytesIO()
        header = {"format": FORMAT, "version": 2, "seed": self.seed,
                  "population_size": self.population_size, "settings": self.settings}
        header = np.frombuffer(json.dumps(header).encode(), np.uint8)
        parents = np.asarray(self.parents, np.int32).reshape(-1, self.population_size)
        seeds = np.asarray(self.seeds, np.int32).reshape(-1, self.population_size)
        np.savez_compressed(
            buffer, header=header, parents=parents, seeds=seeds,
            sha256=np.frombuffer(_digest(header, parents, seeds).encode(), np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data):
        """Inverse of `to_bytes`; verifies and validates as `load` does."""
        return cls._from_bytes(data, "The lineage data")

    @classmethod
    def _from_bytes(cls, data, source):
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                stored = {k: npz[k] for k in ("header", "parents", "seeds")}
                checksum = bytes(npz["sha256"]).decode() if "sha256" in npz.files else None
            header = json.loads(bytes(stored["header"]).decode())
            seed, size, settings = (header["seed"], header["population_size"],
                                    header["settings"])
        except Exception as error:
            raise ValueError(
                f"{source} is not a keras-lrne lineage file, or is truncated or corrupted "
                f"({type(error).__name__}: {error})."
            ) from None
        if checksum is None:
            warnings.warn(
                f"{source} has no SHA-256 checksum (it was written by an older keras-lrne), "
                "so changes to it cannot be detected; it was only checked for consistency. "
                "Save it again (`Lineage.load(path).save(path)`) to add one.",
                stacklevel=3,
            )
        elif checksum != _digest(stored["header"], stored["parents"], stored["seeds"]):
            raise ValueError(
                f"{source} is corrupted or was modified: its SHA-256 checksum does not match "
                "its contents, so it could rebuild other weights than the run's. It was not "
                "used."
            )
        _validate(source, seed, size, settings, stored["parents"], stored["seeds"])
        lineage = cls(seed, size, settings)
        for parents, seeds in zip(stored["parents"], stored["seeds"]):
            lineage.record(parents, seeds)
        return lineage


def _validate(source, seed, size, settings, parents, seeds):
    """Raises a `ValueError` naming `source` and the first invalid record."""

    def fail(problem):
        raise ValueError(f"{source} is not a valid keras-lrne lineage: {problem}.")

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(seed) or seed < 0:
        fail(f"its seed must be a non-negative integer, not {seed!r}")
    if not is_int(size) or size < 1:
        fail(f"its population_size must be a positive integer, not {size!r}")
    if not isinstance(settings, dict):
        fail(f"its settings must be a dict, not {type(settings).__name__}")
    for name, array in (("parents", parents), ("seeds", seeds)):
        if array.ndim != 2 or array.shape[1] != size or not np.issubdtype(
            array.dtype, np.integer
        ):
            fail(f"{name} must be integers of shape (generations, population_size="
                 f"{size}), not {array.dtype} of shape {array.shape}")
    if parents.shape != seeds.shape:
        fail(f"parents and seeds must have the same shape, not {parents.shape} and "
             f"{seeds.shape}")
    bad = (parents < 0) | (parents >= size)
    if bad.any():
        g, i = (int(v) for v in np.argwhere(bad)[0])
        fail(f"parents[{g}][{i}]={int(parents[g, i])} is outside [0, population_size="
             f"{size})")
    bad = seeds < -1
    if bad.any():
        g, i = (int(v) for v in np.argwhere(bad)[0])
        fail(f"seeds[{g}][{i}]={int(seeds[g, i])} is negative (only -1, no mutation, is "
             "allowed)")
