"""Tasks supply what a population is evaluated on, generation by generation."""

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


def _to_numpy(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def dataset_to_arrays(dataset, argument):
    """Materialises a finite `tf.data.Dataset` of `(x, y)` batches into two arrays."""
    import tensorflow as tf

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
        xs.append(np.asarray(element[0]))
        ys.append(np.asarray(element[1]))
    if not xs:
        raise ValueError(
            f"Received an empty dataset for `{argument}`. Received: {argument}={dataset}"
        )
    # Like `fit()`, dataset elements are batches.
    return np.concatenate(xs), np.concatenate(ys)


class ArrayTask(Task):
    """Evaluates every member on the same arrays every generation.

    Args:
        x: inputs, numpy array or tensor, or a finite `tf.data.Dataset` of `(x, y)`.
        y: targets (None when `x` is a dataset).
        validation_data: `(x_val, y_val)`, a `tf.data.Dataset` of them, or None.
    """

    def __init__(self, x, y=None, validation_data=None):
        self.x, self.y = as_arrays(x, y, "x")
        self._validation = None
        if validation_data is not None:
            if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
                self._validation = as_arrays(validation_data[0], validation_data[1],
                                             "validation_data")
            else:
                self._validation = as_arrays(validation_data, None, "validation_data")
        if self.x.ndim == 2 and np.issubdtype(self.x.dtype, np.integer):
            self.tokens_per_sample = int(self.x.shape[1])

    def train_data(self, generation):
        return self.x, self.y

    def validation_data(self):
        return self._validation


def as_arrays(x, y, argument):
    """Normalises `x, y` (arrays, tensors or a dataset) to a pair of numpy arrays."""
    if hasattr(x, "element_spec"):
        if y is not None:
            raise ValueError(
                f"`y` must be None when `{argument}` is a tf.data.Dataset yielding (x, y). "
                f"Received: y of type {type(y).__name__}"
            )
        return dataset_to_arrays(x, argument)
    if y is None:
        raise ValueError(
            f"Received no targets for `{argument}`: pass `y`, a tf.data.Dataset of `(x, y)`, "
            f"or a task such as `keras_lrne.tasks.LanguageModeling`. Received: y=None"
        )
    x, y = _to_numpy(x), _to_numpy(y)
    if x.shape[0] == 0:
        raise ValueError(f"Received an empty array for `{argument}`. Received: shape={x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{argument}` and its targets have different numbers of samples. "
            f"Received: x.shape={x.shape}, y.shape={y.shape}"
        )
    return x, y
