"""Tasks supply what a population is evaluated on, generation by generation."""

import collections.abc

import numpy as np


class Task:
    """Base class of evolution tasks.

    A supervised task returns, for every generation, the `(x, y)` arrays the whole
    population is evaluated on (same shapes every generation, so nothing retraces), and
    optionally validation arrays for the elite.
    """

    #: Tokens per sample, for the `member_tokens_per_second` log (None: not a token task).
    tokens_per_sample = None

    def train_data(self, generation):
        """Returns `(x, y)` numpy arrays for `generation`."""
        raise NotImplementedError

    def validation_data(self):
        """Returns `(x, y)` numpy arrays, or None."""
        return None

    #: Whether the task is scored on `(x, y)` data (with the model's compiled loss, or
    #: a compiled `Fitness`); the engine (`keras_lrne.engine`) picks the evaluator.
    supervised = True

    def fingerprint(self):
        """What determines this task's losses, as a JSON-able dict.

        A resumed run (`BackupAndRestore`) must match the checkpoint's fingerprint, so a
        resume never mixes two runs' data or settings; a mismatch names each difference.
        The default holds the class and, when the task has one, `get_config()`. Tasks of
        your own that hold data should add a digest of it (e.g. with
        `keras_lrne.checkpoint.streaming_digest(array, ...)`).

        Returns:
            A dict of JSON-able values.
        """
        config = self.get_config() if hasattr(self, "get_config") else None
        return {"class": type(self).__name__, "config": config}


#: The kinds of task, as the engine (`keras_lrne.engine.make_evaluator`) and
#: `keras_lrne.distribution.RayWorkers` tell them apart: `(kind, test)` pairs, the first
#: whose test holds names the task's kind. "python_fitness": a `Fitness` with
#: `per_member=True` (a Python call per member); "supervised": scored on `(x, y)` data
#: (the compiled loss, or a compiled `Fitness`); "jax_environment": episodes of a JAX
#: environment run inside one compiled call (`JaxEnvironment`, `on_device`);
#: "environment": episodes on the host.
TASK_KINDS = (
    ("python_fitness", lambda task: bool(getattr(task, "per_member", False))),
    ("supervised", lambda task: bool(task.supervised)),
    ("jax_environment", lambda task: bool(getattr(task, "on_device", False))),
    ("environment", lambda task: True),
)


def task_kind(task):
    """The kind of `task` (see `TASK_KINDS`): "python_fitness", "supervised",
    "jax_environment" or "environment"."""
    return next(kind for kind, test in TASK_KINDS if test(task))


def fitness_maximize(task):
    """None for a task scored by a loss; for a `Fitness` (a task with an `objective`
    and `maximize`), whether higher fitness is better."""
    if hasattr(task, "objective") and hasattr(task, "maximize"):
        return bool(task.maximize)
    return None


def objective_value(value, maximize):
    """The loss of an objective `value`, or the objective of a loss `value` (the one sign
    flip, the same both ways): `-value` when higher is better (`maximize`), else
    `value`. Works on numbers, arrays and tensors."""
    return -value if maximize else value


def _to_numpy(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def is_structure(value):
    """Whether `value` holds several arrays: a dict, or a list/tuple of arrays (as Keras
    takes for models with several inputs or outputs)."""
    if isinstance(value, dict):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, (dict, list, tuple)) or len(np.shape(v)) >= 1 for v in value)


def leaves(value, argument):
    """`[(name, array)]` for every array of `value` (an array, or a dict/list of arrays),
    named as in messages: `x`, `x['token_ids']`, `x[1]`."""
    if isinstance(value, dict):
        return [item for key in value for item in leaves(value[key], f"{argument}[{key!r}]")]
    if is_structure(value):
        return [item for i, v in enumerate(value) for item in leaves(v, f"{argument}[{i}]")]
    return [(argument, value)]


def map_arrays(fn, value):
    """Applies `fn` to every array of `value`, keeping its dict/list structure."""
    if isinstance(value, dict):
        return {key: map_arrays(fn, v) for key, v in value.items()}
    if is_structure(value):
        return type(value)(map_arrays(fn, v) for v in value) if isinstance(value, tuple) \
            else [map_arrays(fn, v) for v in value]
    return fn(value)


def num_samples(value):
    """The number of samples (leading dimension) of an array or a structure of them."""
    return int(np.shape(leaves(value, "x")[0][1])[0])


def dataset_to_arrays(dataset, argument):
    """Materialises a finite `tf.data.Dataset` of `(x, y)` batches into arrays (or dicts
    or lists of arrays, as the dataset yields them)."""
    from keras_lrne._tf import import_tensorflow

    tf = import_tensorflow("A tf.data.Dataset input")
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"Received an infinite dataset for `{argument}`: evolution evaluates a fixed set "
            f"of samples. Use `dataset.take(n)`. Received: {argument}={dataset}"
        )
    xs, ys = [], []
    for element in dataset.as_numpy_iterator():
        if not isinstance(element, tuple) or len(element) < 2:
            raise ValueError(
                f"Expected `{argument}` to yield `(x, y)` batches, as for `fit()`. "
                f"Received an element of type {type(element).__name__}"
            )
        xs.append(element[0])
        ys.append(element[1])
    if not xs:
        raise ValueError(
            f"Received an empty dataset for `{argument}`. Received: {argument}={dataset}"
        )

    def concatenate(batches):
        first = batches[0]
        if isinstance(first, dict):
            return {k: concatenate([b[k] for b in batches]) for k in first}
        if isinstance(first, (list, tuple)):
            return [concatenate([b[i] for b in batches]) for i in range(len(first))]
        return np.concatenate([np.asarray(b) for b in batches])

    # Like `fit()`, dataset elements are batches.
    return _check_finite(concatenate(xs), concatenate(ys), argument)


class ArrayTask(Task):
    """Evaluates every member on the same arrays every generation.

    Args:
        x: inputs: a numpy array or tensor, a dict or list of them for a model with
            several inputs (as `fit()` takes them), or a finite `tf.data.Dataset` of
            `(x, y)`.
        y: targets (None when `x` is a dataset): an array, or a dict or list of arrays
            for a model with several outputs.
        validation_data: `(x_val, y_val)`, a `tf.data.Dataset` of them, or None.
    """

    def __init__(self, x, y=None, validation_data=None):
        self.x, self.y = as_arrays(x, y, "x")
        # Where the targets came from, for error messages: `y`, or `x` (a dataset).
        self.targets_argument = "x" if y is None else "y"
        self._validation = None
        if validation_data is not None:
            self._validation = as_validation(validation_data)
        if (not is_structure(self.x) and self.x.ndim == 2
                and np.issubdtype(self.x.dtype, np.integer)):
            self.tokens_per_sample = int(self.x.shape[1])

    def train_data(self, generation):
        return self.x, self.y

    def validation_data(self):
        return self._validation

    def fingerprint(self):
        """The class and a SHA-256 of every byte, dtype and shape of the data."""
        validation = self._validation or (None, None)
        return {"class": type(self).__name__, "x": data_digest(self.x),
                "y": data_digest(self.y), "validation": data_digest(*validation)}


def data_digest(*values):
    """SHA-256 of arrays (or dicts/lists of arrays): every byte, dtype, shape and key."""
    from keras_lrne.checkpoint import streaming_digest

    arrays = []
    for value in values:
        if value is not None and is_structure(value):
            for name, array in leaves(value, ""):
                arrays += [np.asarray(name), array]
        else:
            arrays.append(value)
    return streaming_digest(*arrays)


def as_validation(validation_data):
    """Normalises `validation_data` (`(x_val, y_val)` or a dataset) to arrays."""
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        return as_arrays(validation_data[0], validation_data[1], "validation_data")
    return as_arrays(validation_data, None, "validation_data")


def as_arrays(x, y, argument, require_targets=True):
    """Normalises `x, y` (arrays, tensors, dicts/lists of them, or a dataset) to numpy
    arrays of the same structure; checks counts, dtypes and finiteness."""
    if hasattr(x, "element_spec"):
        if y is not None:
            raise ValueError(
                f"`y` must be None when `{argument}` is a tf.data.Dataset yielding (x, y). "
                f"Received: y of type {type(y).__name__}"
            )
        return dataset_to_arrays(x, argument)
    if y is None and require_targets:
        raise ValueError(
            f"Received no targets for `{argument}`: pass `y`, a tf.data.Dataset of `(x, y)`, "
            f"or a task such as `keras_lrne.tasks.LanguageModeling`. Received: y=None"
        )
    separate = argument == "x"
    _check_not_iterator(x, argument)
    _check_not_iterator(y, "y" if separate else argument)
    x = map_arrays(_to_numpy, x)
    y = None if y is None else map_arrays(_to_numpy, y)
    x_leaves = leaves(x, argument)
    y_leaves = [] if y is None else leaves(y, "y" if separate else argument)
    for name, array in x_leaves + y_leaves:
        if array.ndim == 0:
            raise ValueError(
                f"Received a scalar for `{name}`: evolution evaluates the model on data, "
                "arrays with a leading sample axis (a numpy array or tensor, or a dict or "
                f"list of them). Received: {name}={array.item()!r:.100}"
            )
        if array.shape[0] == 0:
            raise ValueError(
                f"Received an empty array for `{name}`: it needs a leading sample axis with "
                f"at least one sample. Received: shape={array.shape}"
            )
    if not separate and y is not None:  # `(x, y)` in one argument: its two parts
        x_leaves = leaves(x, f"{argument}[0]")
        y_leaves = leaves(y, f"{argument}[1]")
    counts = {name: array.shape[0] for name, array in x_leaves + y_leaves}
    if len(set(counts.values())) > 1:
        if len(counts) == 2 and y is not None and not is_structure(x) and not is_structure(y):
            (x_name, _), (y_name, _) = x_leaves + y_leaves
            raise ValueError(
                f"`{argument}` and its targets have different numbers of samples "
                f"({x.shape[0]} and {y.shape[0]}). Received: {x_name}.shape={x.shape}, "
                f"{y_name}.shape={y.shape}"
            )
        listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise ValueError(
            f"The arrays of `{argument}` have different numbers of samples (the leading "
            f"dimension must agree). Received: {listed}"
        )
    return _check_finite(x, y, argument, separate_targets=separate)


def _check_not_iterator(value, argument):
    """Fails for a generator or iterator: evolution evaluates every member on the same
    fixed arrays, which an iterator cannot give twice."""
    if isinstance(value, collections.abc.Iterator) and not hasattr(value, "shape"):
        raise ValueError(
            f"Received a {type(value).__name__} for `{argument}`: generators and iterators "
            "are not supported, because every member of every generation is evaluated on "
            "the same samples. Pass arrays (e.g. `np.concatenate` what the generator "
            f"yields) or a finite `tf.data.Dataset`. Received: {argument}={value!r:.100}"
        )


def _first_true(mask):
    """The index of the first True of `mask`: as a tuple, and written `i, j` for messages."""
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))
    return first, ", ".join(map(str, first))


def _check_finite(x, y, argument, separate_targets=False):
    """Fails when floating-point inputs or targets hold NaN or inf (every loss would be).

    `separate_targets`: the targets were passed as `y` (arrays), not inside `argument`.
    """
    checks = [(values, name, "" if separate_targets else " (its inputs)")
              for name, values in leaves(x, argument)]
    if y is not None:
        checks += [(values, name, "" if separate_targets else " (its targets)")
                   for name, values in leaves(y, "y" if separate_targets else argument)]
    for values, name, part in checks:
        _check_numeric(values, name, part)
    for values, name, part in checks:
        if not (np.issubdtype(values.dtype, np.inexact) or "float" in values.dtype.name):
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            first, index = _first_true(bad)
            raise ValueError(
                f"Received non-finite values (NaN or inf) in `{name}`{part}: {int(bad.sum())} "
                f"of {bad.size} values are not finite, the first at index [{index}]. Every "
                "member's loss would be NaN or inf. Clean or drop those samples before "
                f"`evolve()`. Received: {name}[{index}]={float(values[first])}"
            )
    return x, y


def _check_numeric(values, name, part):
    """Fails when `values` are not numbers (strings, bytes, Python objects): the population
    is evaluated on numeric tensors, and a cast inside the model would fail obscurely."""
    if values.dtype.kind in "biuf":
        return
    example, index = None, ""
    if values.size:
        example = values.flat[0]
        example = example.item() if isinstance(example, np.generic) else example
        index = f"[{', '.join('0' * values.ndim)}]"
    raise ValueError(
        f"Received `{name}`{part} of dtype {values.dtype}: evolution evaluates the model "
        "on numeric arrays (integer, float or bool), not on strings or Python objects. "
        "Turn text into numbers first, e.g. with `keras.layers.TextVectorization` applied "
        "to the data, or use `keras_lrne.tasks.LanguageModeling` for language modelling. "
        f"Received: {name}{index}={example!r}"
    )


def _loss_name(loss):
    """How a compiled loss is named in error messages."""
    if isinstance(loss, str):
        return repr(loss)
    return getattr(loss, "__name__", None) or type(loss).__name__


def _sparse_loss_ignore_class(loss):
    """`(is_sparse_categorical_crossentropy, ignore_class)` for a compiled loss."""
    import keras

    if isinstance(loss, str):
        return loss == "sparse_categorical_crossentropy", None
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True, loss.get_config().get("ignore_class")
    return loss is keras.losses.sparse_categorical_crossentropy, None


def _check_whole_labels(values, name, loss):
    """Fails when float class labels have a fractional part (they would be truncated)."""
    if values.dtype.kind != "f":
        return
    fractional = np.isfinite(values) & (values != np.floor(values))
    if not fractional.any():
        return
    first, index = _first_true(fractional)
    part = "" if name == "y" else " (its targets)"
    raise ValueError(
        f"Received labels that are not whole numbers in `{name}`{part}: the loss {loss} "
        f"takes integer class indices, but {int(fractional.sum())} labels have a fractional "
        f"part, the first at index [{index}]; they would be truncated silently. Pass "
        "integer labels, or for soft labels a loss such as `categorical_crossentropy` with "
        f"one-hot or probability targets. Received: {name}[{index}]={values[first].item()!r}"
    )


def _model_outputs(model, sample):
    """The model's outputs, flat: symbolic ones, or those of a call on `sample`."""
    import keras

    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        outputs = model(sample, training=False)
    return keras.tree.flatten(outputs)


def _builtin_loss(loss):
    """`loss` as Keras' own loss (function or `Loss` instance), or None for a loss of the
    user's (whose target shapes may be anything)."""
    import keras

    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except (ValueError, TypeError):
            return None
    module = getattr(type(loss) if isinstance(loss, keras.losses.Loss) else loss,
                     "__module__", "") or ""
    if not module.startswith("keras.") or "ctc" in _loss_name(loss).lower():
        return None
    return loss


def _shapes_match(expected, received):
    """Sample shapes that a Keras loss pairs up (trailing axes of size 1 aside)."""
    expected, received = (list(shape) for shape in (expected, received))
    while expected and expected[-1] == 1:
        expected.pop()
    while received and received[-1] == 1:
        received.pop()
    return len(expected) == len(received) and all(
        e is None or e == r for e, r in zip(expected, received))


def check_target_shapes(model, sample, targets, argument):
    """Fails when targets are shaped unlike what the compiled loss needs of the model's
    outputs, before any work (inside the compiled population call the error would be the
    backend's, and on JAX it names shapes of one member).

    Checked for Keras' own losses: sparse categorical cross-entropy takes one class index
    per output position (the output's shape without its last axis), the others a target
    shaped like the output (trailing axes of size 1 aside). Losses of your own, and
    structures of targets that do not pair up with the outputs, are not checked.

    Args:
        model: the built, compiled model.
        sample: a batch of inputs, used only when the model has no symbolic outputs.
        targets: the training targets (an array, or a dict/list for several outputs).
        argument: where the targets came from, for messages (`y`, or `x` for a dataset).
    """
    loss = getattr(model, "loss", None)
    if targets is None or loss is None:
        return
    outputs = _model_outputs(model, sample)
    try:
        names = list(model.output_names)
    except (AttributeError, ValueError):
        names = []

    def loss_of(i):
        if isinstance(loss, dict):
            return loss.get(names[i]) if i < len(names) else None
        if isinstance(loss, (list, tuple)):
            return loss[i] if i < len(loss) else None
        return loss

    if not is_structure(targets):
        pairs = [(argument, targets, 0)] if len(outputs) == 1 else []
    elif isinstance(targets, dict):
        pairs = [(f"{argument}[{name!r}]", targets[name], i) for i, name in enumerate(names)
                 if name in targets and i < len(outputs)]
    else:
        pairs = ([(f"{argument}[{i}]", t, i) for i, t in enumerate(targets)]
                 if len(targets) == len(outputs) else [])
    for name, values, i in pairs:
        output_loss = _builtin_loss(loss_of(i))
        if output_loss is None or is_structure(values):
            continue
        output = tuple(outputs[i].shape[1:])
        received = tuple(np.shape(values)[1:])
        sparse, _ = _sparse_loss_ignore_class(loss_of(i))
        expected = output[:-1] if sparse else output
        if _shapes_match(expected, received):
            continue
        part = "" if name == "y" or name.startswith("y[") else " (its targets)"
        need = ("one integer class index per output position: the output's shape without "
                "its last axis, the classes" if sparse else "the shape of the output")
        raise ValueError(
            f"The targets `{name}`{part} do not match the model's output for the loss "
            f"{_loss_name(loss_of(i))}: each target must have shape {expected} ({need}), "
            f"the model's output having shape {output} per sample. Received: {name} with "
            f"target shape {received}"
        )


def check_sparse_labels(model, sample, labels):
    """Fails when sparse categorical labels are not whole numbers or fall outside the
    model's classes.

    With a sparse categorical cross-entropy loss (`"sparse_categorical_crossentropy"` or
    `keras.losses.SparseCategoricalCrossentropy`), every label must be an integer in
    `[0, num_classes)`, `num_classes` being the last dimension of the model's output (or
    the loss's `ignore_class`); other labels give NaN or meaningless losses, silently.
    Does nothing for other losses; the range is not checked for models with several
    outputs.

    Args:
        model: the built, compiled model.
        sample: a batch of inputs, used only when the model has no symbolic outputs (a
            subclassed model) to find its output size.
        labels: dict mapping the argument the labels came from (`"y"`, `"x"` for a dataset
            or task, `"validation_data"`) to a numpy array of labels, or None.
    """
    sparse, ignore_class = _sparse_loss_ignore_class(getattr(model, "loss", None))
    if not sparse:
        return
    # Several outputs' targets (dicts or lists of arrays) are not checked here.
    labels = {name: values for name, values in labels.items()
              if values is not None and not is_structure(values)}
    for name, values in labels.items():
        if values is not None:
            _check_whole_labels(np.asarray(values), name, _loss_name(model.loss))
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        outputs = model(sample, training=False)
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            return
        outputs = outputs[0]
    if not hasattr(outputs, "shape") or outputs.shape[-1] is None:
        return
    num_classes = int(outputs.shape[-1])
    for name, values in labels.items():
        if values is None:
            continue
        values = np.asarray(values)
        part = "" if name == "y" else " (its targets)"
        bad = (values < 0) | (values >= num_classes)
        if ignore_class is not None:
            bad &= values != ignore_class
        if not bad.any():
            continue
        first, index = _first_true(bad)
        raise ValueError(
            f"Received labels out of range in `{name}`{part}: a sparse categorical "
            f"cross-entropy loss needs labels in [0, {num_classes}), the model having "
            f"{num_classes} classes (the last dimension of its output), but "
            f"{int(bad.sum())} labels are outside it, the first at index [{index}]. "
            f"Received: {name}[{index}]={values[first].item()!r}"
        )
