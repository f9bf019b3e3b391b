"""`Fitness`: evolve a model on an objective of your own."""

from keras_lrne._validation import check_bool
from keras_lrne.tasks.base import Task, as_arrays, data_digest, num_samples


def _qualified_name(fn):
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name


class Fitness(Task):
    """An objective of your own: any function of a member's outputs, or of the member.

    Two forms:

    - **Compiled** (`per_member=False`, the default): `data` is `x` or `(x, y)`
      (arrays, or dicts/lists of arrays for several inputs), evaluated in batches like
      supervised data. `fn(outputs)`, or `fn(outputs, y)` when `data` has targets, gets
      one member's model outputs on one batch (and that batch's targets) and returns a
      scalar. It is traced inside the vectorised population call, so it uses
      `keras.ops` only, and it need not be differentiable (accuracy, a reward computed
      from outputs). A member's fitness is the batch-size-weighted mean over the batches,
      so a mean such as accuracy comes out exact.
    - **Python** (`per_member=True`): `fn(model)` is plain Python, called once per member
      with `model` holding that member's weights; it returns a float. Any code is
      allowed: `model.predict`, a simulator, a subprocess. Under
      `keras_lrne.distribution.RayWorkers` the calls run in the workers (which rebuild
      their members from seeds), so `fn` must be importable there (a module-level
      function; one defined in the script that calls `evolve()` is shipped by Ray).

    Higher fitness is better with `maximize=True`. `evolve()` logs, per generation,
    `fitness` (of the weights the model holds: the GA's elite, OpenES's mean),
    `mean_fitness` and `median_fitness` (over members with a finite fitness) and `loss`
    (`-fitness` when maximising, `fitness` otherwise), so `EarlyStopping`,
    `ModelCheckpoint` and keras-tuner work on `loss` unchanged; the Python form also logs
    `failed_members`. NaN or infinite fitness ranks last; in the Python form an exception
    in `fn` fails only that member (it ranks last, and one warning per generation names
    it), unless every member fails: then the run stops with the first exception.

    A resumed run (`keras.callbacks.BackupAndRestore`) must use the same fitness: the
    run's signature holds `fn`'s qualified name, the form, the direction and a digest
    of `data`.

    Args:
        fn: the fitness function (see the two forms above).
        data: for the compiled form, `x` or `(x, y)`: a tuple of two is read as
            `(x, y)`; pass several inputs as a dict or a list. None for the Python form.
        per_member: False (compiled form) or True (Python form).
        maximize: True if higher fitness is better (default), False to minimise.

    Example:

    >>> def accuracy(logits, labels):
    ...     predicted = keras.ops.argmax(logits, axis=-1)
    ...     return keras.ops.mean(keras.ops.cast(predicted == labels, "float32"))
    >>> history = keras_lrne.evolve(
    ...     model, keras_lrne.tasks.Fitness(accuracy, data=(x, y)), generations=20)
    >>> history.history["fitness"][-1]
    """

    def __init__(self, fn, data=None, per_member=False, maximize=True):
        if not callable(fn):
            raise ValueError(
                "Received an invalid value for `fn`, expected a function: "
                "`fn(outputs)` or `fn(outputs, y)` (per_member=False), or `fn(model)` "
                f"(per_member=True). Received: fn={fn!r}"
            )
        self.fn = fn
        self.per_member = check_bool("per_member", per_member)
        self.maximize = check_bool("maximize", maximize)
        self.x = self.y = None
        if self.per_member:
            if data is not None:
                raise ValueError(
                    "`data` is not used with `per_member=True`: `fn(model)` is called "
                    "once per member and reads whatever data it needs itself (capture it "
                    "in the function, e.g. with `functools.partial`). Received: data of "
                    f"type {type(data).__name__}"
                )
        else:
            if data is None:
                raise ValueError(
                    "Received no data for the compiled form (`per_member=False`): pass "
                    "`data=x` or `data=(x, y)`, the batches `fn(outputs[, y])` is "
                    "evaluated on, or use `per_member=True` for `fn(model)`. "
                    "Received: data=None"
                )
            if isinstance(data, tuple) and len(data) == 2 and not hasattr(data, "_fields"):
                x, y = data
            else:
                x, y = data, None
            self.x, self.y = as_arrays(x, y, "data", require_targets=False)
            if isinstance(data, tuple) and len(data) == 2:
                self.targets_argument = "data"
        # The engine scores the compiled form on data, in batches.
        self.supervised = not self.per_member

    @property
    def has_targets(self):
        """Whether `data` has targets (`fn` then receives them)."""
        return self.y is not None

    def train_data(self, generation):
        """The same `(x, y)` every generation (`y` None without targets)."""
        if self.per_member:
            raise ValueError("A Fitness with per_member=True has no data.")
        return self.x, self.y

    def validation_data(self):
        return None

    @property
    def num_samples(self):
        return None if self.x is None else num_samples(self.x)

    def objective(self):
        """The per-member, per-batch loss the compiled form minimises: `(y, outputs) ->
        -fn(outputs[, y])` when maximising, `fn(...)` otherwise (a float32 scalar).

        Returns:
            A function traced inside the population call.
        """
        from keras import ops

        fn, sign, with_targets = self.fn, -1.0 if self.maximize else 1.0, self.has_targets
        name = _qualified_name(fn)

        def loss(y, outputs):
            value = fn(outputs, y) if with_targets else fn(outputs)
            value = ops.convert_to_tensor(value)
            if len(value.shape) != 0:
                raise ValueError(
                    f"The fitness function {name} must return a scalar for one member's "
                    f"batch, but returned a tensor of shape {tuple(value.shape)}. Reduce "
                    "it, e.g. with `keras.ops.mean`."
                )
            return sign * ops.cast(value, "float32")

        return loss

    def fingerprint(self):
        """The form, the direction, `fn`'s qualified name and a digest of `data`."""
        return {"class": type(self).__name__, "fn": _qualified_name(self.fn),
                "per_member": self.per_member, "maximize": self.maximize,
                "data": None if self.x is None else data_digest(self.x, self.y)}

    def get_config(self):
        return {"fn": _qualified_name(self.fn), "per_member": self.per_member,
                "maximize": self.maximize}

    def __repr__(self):
        samples = "" if self.x is None else f", data of {self.num_samples} samples"
        return (f"Fitness({_qualified_name(self.fn)}{samples}, per_member={self.per_member}, "
                f"maximize={self.maximize})")

