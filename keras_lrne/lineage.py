"""The compact record of a run: who every member came from, and with which seed."""

import hashlib
import io
import json
import warnings

import numpy as np

FORMAT = "keras_lrne_lineage"


def _digest(header, records):
    """SHA-256 hex digest of the stored header bytes and every record array (dtypes and
    shapes too), in the header's order."""
    h = hashlib.sha256()
    for name, array in (("header", header), *records.items()):
        array = np.ascontiguousarray(array)
        h.update(f"{name}:{array.dtype.str}{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()


#: The GA's records, the only ones of files written before strategies had their own.
GA_RECORDS = ("parents", "seeds")


class Lineage:
    """The compact genome of a run: per generation, the strategy's small records.

    For the `GA`: each member's (parent index, mutation seed). Generation 0 is the
    initial population: member `i` is the `i`-th independent initialisation of the run
    seed. Population `g + 1` was made from population `g`: member `i` of it is member
    `parents[g][i]` of population `g`, plus Gaussian noise drawn from `seeds[g][i]` (or
    unchanged when the seed is -1, as for survivors). Four bytes of parent and four of
    seed per member are all that is needed to rebuild any member (see
    `keras_lrne.Model.rebuild_member`). For `OpenES`: the noise seeds and the shaped
    fitness weights of every generation, from which the mean of any generation is
    replayed. Other strategies record what their `Strategy.record` returns. A strategy
    whose mean starts at the model's weights (`Strategy.starts_from_weights`: `CMAES`,
    `SepCMAES`, `SNES`, `PGPE`) also needs those weights, kept once as `start`.

    Args:
        seed: the run seed.
        population_size: members per generation.
        settings: optional JSON-serialisable dict stored with the record (e.g. the
            strategy and its config).
        start: the weights the run started from (one numpy array per evolvable
            variable), or None when the run's seed alone gives them.
    """

    def __init__(self, seed, population_size, settings=None, start=None):
        self.seed = int(seed)
        self.population_size = int(population_size)
        self.settings = dict(settings or {})
        self.start = None if start is None else [np.asarray(v) for v in start]
        self.records = {}
        self._count = 0

    def rebuild_arguments(self):
        """The keyword arguments of `Strategy.rebuild` beyond the records: `start`
        when the run keeps its starting weights."""
        return {} if self.start is None else {"start": self.start}

    @property
    def num_generations(self):
        """Number of populations recorded, including the initial one."""
        return self._count + 1

    @property
    def parents(self):
        """The GA's per-generation parent indices (a list of int32 arrays)."""
        return self.records.get("parents", [])

    @property
    def seeds(self):
        """The GA's per-generation mutation seeds (a list of int32 arrays)."""
        return self.records.get("seeds", [])

    def record(self, parents=None, seeds=None, **records):
        """Appends how the next population was made from the current one.

        `record(parents, seeds)` for the GA; `record(**strategy.record(state))` in
        general: 1-D arrays, each of the same length every generation.
        """
        if parents is not None or seeds is not None:
            parents = np.asarray(parents, np.int32)
            seeds = np.asarray(seeds, np.int32)
            if parents.shape != (self.population_size,) or seeds.shape != parents.shape:
                raise ValueError(
                    f"Expected parents and seeds of shape ({self.population_size},). "
                    f"Received: {parents.shape} and {seeds.shape}"
                )
            records = {"parents": parents, "seeds": seeds, **records}
        if self._count and sorted(records) != sorted(self.records):
            raise ValueError(
                f"Expected the records {sorted(self.records)} every generation. "
                f"Received: {sorted(records)}"
            )
        for name, value in records.items():
            value = np.asarray(value)
            if value.ndim != 1:
                raise ValueError(
                    f"Expected 1-D record arrays. Received: {name} of shape {value.shape}")
            rows = self.records.setdefault(name, [])
            if rows and rows[0].shape != value.shape:
                raise ValueError(
                    f"Expected {name} of shape {rows[0].shape} as in earlier generations. "
                    f"Received: {value.shape}"
                )
            rows.append(value)
        self._count += 1

    def chain(self, generation, member):
        """Returns `(initial_member, seeds)`: the root and the mutation seeds applied in
        order (GA lineages)."""
        from keras_lrne.strategies.ga import chain_of

        self.check_index(generation, member)
        if "parents" not in self.records and self._count:
            raise ValueError("`chain()` needs a GA lineage (parents and seeds).")
        return chain_of(self.parents, self.seeds, generation, member)

    def check_index(self, generation, member):
        """Fails, naming the value, unless `generation` is a recorded population and
        `member` (or None) one of its members."""
        if not 0 <= generation < self.num_generations:
            raise ValueError(
                "Received an invalid value for `generation`, expected 0 <= generation < "
                f"{self.num_generations}. Received: generation={generation}"
            )
        if member is not None and not 0 <= member < self.population_size:
            raise ValueError(
                "Received an invalid value for `member`, expected 0 <= member < "
                f"{self.population_size}. Received: member={member}"
            )

    def strategy(self):
        """The run's strategy, rebuilt from the recorded settings."""
        from keras_lrne import strategies

        settings = dict(self.settings)
        name = settings.pop("strategy", "GA")
        config = settings.get("config")
        if config is None:  # files written before strategies were pluggable: flat GA
            config = {k: v for k, v in settings.items() if k in (
                "population_size", "num_parents", "mutation_rate", "factor_mutation_rate")}
        cls = getattr(strategies, name, None)
        if cls is None:
            raise ValueError(
                f"The lineage was recorded by the strategy {name!r}, which is not in "
                "`keras_lrne.strategies`; rebuild with that strategy's own `rebuild()`."
            )
        return cls.from_config(config)

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
        from keras_lrne import genome

        if not getattr(model, "built", False) or not model.trainable_variables:
            raise ValueError(
                "Received an invalid value for `model`, expected a built model with "
                f"trainable variables. Received: model={getattr(model, 'name', model)!r}"
            )
        self.check_index(generation, member)
        strategy = self.strategy()
        specs = genome.collect_variable_specs(
            model, freeze_normalization=self.settings.get("freeze_normalization", True)
        )
        evolvable = [s for s in specs if s.evolvable]
        shapes = [list(s.shape) for s in evolvable]
        recorded = self.settings.get("evolvable_shapes")
        if recorded is not None and recorded != shapes:
            raise ValueError(
                "The model's evolvable variables differ from the run's: the lineage records "
                f"shapes {recorded}, the model has {shapes}."
            )
        if self.start is not None and [list(v.shape) for v in self.start] != shapes:
            raise ValueError(
                "The model's evolvable variables differ from the run's: the lineage's "
                f"starting weights have shapes {[list(v.shape) for v in self.start]}, the "
                f"model has {shapes}."
            )
        records = {k: np.asarray(v) for k, v in self.records.items()}
        arrays = strategy.rebuild(evolvable, self.seed, records, generation, member,
                                  **self.rebuild_arguments())
        if assign:
            variables = model.trainable_variables
            for spec, array in zip(evolvable, arrays):
                variables[spec.index].assign(array)
        return arrays

    def to_bytes(self):
        """Serialises the lineage to a compact `.npz` byte string.

        Entries: `header` (UTF-8 JSON: format, seed, population size, settings and the
        record names), one array per record (one row per generation; `parents` and
        `seeds`, int32, for the GA), `start_0`, `start_1`, ... (the starting weights,
        when the lineage keeps them) and `sha256`, the hex SHA-256 of the others (see
        `load`).
        """
        buffer = io.BytesIO()
        names = list(self.records) if self._count else list(GA_RECORDS)
        header = {"format": FORMAT, "version": 3, "seed": self.seed,
                  "population_size": self.population_size, "settings": self.settings,
                  "records": names, "generations": self._count}
        if self.start is not None:
            header["start"] = len(self.start)
        header = np.frombuffer(json.dumps(header).encode(), np.uint8)
        records = {}
        for name in names:
            rows = self.records.get(name, [])
            dtype = rows[0].dtype if rows else np.int32
            width = rows[0].shape[0] if rows else self.population_size
            records[name] = np.asarray(rows, dtype).reshape(-1, width)
        start = {f"start_{i}": v for i, v in enumerate(self.start or [])}
        np.savez_compressed(
            buffer, header=header, **records, **start,
            sha256=np.frombuffer(_digest(header, {**records, **start}).encode(), np.uint8),
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
                header_bytes = npz["header"]
                header = json.loads(bytes(header_bytes).decode())
                names = header.get("records", list(GA_RECORDS))
                records = {k: npz[k] for k in names}
                start = [npz[f"start_{i}"] for i in range(int(header.get("start", 0)))]
                checksum = bytes(npz["sha256"]).decode() if "sha256" in npz.files else None
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
        elif checksum != _digest(header_bytes, {
                **records, **{f"start_{i}": v for i, v in enumerate(start)}}):
            raise ValueError(
                f"{source} is corrupted or was modified: its SHA-256 checksum does not match "
                "its contents, so it could rebuild other weights than the run's. It was not "
                "used."
            )
        _validate(source, seed, size, settings, records)
        if any(v.dtype.kind != "f" or not np.isfinite(v).all() for v in start):
            raise ValueError(f"{source} is not a valid keras-lrne lineage: its starting "
                             "weights must be finite floating-point numbers.")
        lineage = cls(seed, size, settings, start=start if "start" in header else None)
        rows = len(next(iter(records.values()))) if records else header.get("generations", 0)
        for g in range(int(rows)):
            lineage.record(**{k: v[g] for k, v in records.items()})
        return lineage


def _validate(source, seed, size, settings, records):
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
    rows = {len(v) for v in records.values()}
    if len(rows) > 1:
        fail(f"its records must have one row per generation each, not {sorted(rows)} rows")
    for name, array in records.items():
        if array.ndim != 2:
            fail(f"{name} must have shape (generations, width), not {array.shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            fail(f"{name} holds non-finite values")
        if array.dtype.kind not in "iuf":
            fail(f"{name} must hold numbers, not {array.dtype}")
    for name in GA_RECORDS:
        if name in records:
            array = records[name]
            if array.shape[1] != size or not np.issubdtype(array.dtype, np.integer):
                fail(f"{name} must be integers of shape (generations, population_size="
                     f"{size}), not {array.dtype} of shape {array.shape}")
    if "parents" in records:
        parents = records["parents"]
        bad = (parents < 0) | (parents >= size)
        if bad.any():
            g, i = (int(v) for v in np.argwhere(bad)[0])
            fail(f"parents[{g}][{i}]={int(parents[g, i])} is outside [0, population_size="
                 f"{size})")
    if "seeds" in records:
        seeds = records["seeds"]
        bad = seeds < -1
        if bad.any():
            g, i = (int(v) for v in np.argwhere(bad)[0])
            fail(f"seeds[{g}][{i}]={int(seeds[g, i])} is negative (only -1, no mutation, "
                 "is allowed)")
