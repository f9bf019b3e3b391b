"""`Fitness`: evolve a model on an objective of your own."""

import contextlib
import functools
import hashlib
import math
import numbers
import types

import numpy as np

from keras_lrne._validation import check_bool
from keras_lrne.tasks.base import Task, as_arrays, data_digest, num_samples, objective_value


def _qualified_name(fn):
    if isinstance(fn, functools.partial):
        return f"functools.partial({_qualified_name(fn.func)})"
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name


def _short_name(fn):
    """`fn`'s own name, without its module and enclosing functions: `<lambda>`."""
    if isinstance(fn, functools.partial):
        return f"partial({_short_name(fn.func)})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return name.rsplit(".", 1)[-1]


# Code object flags that change what a function does with its arguments (*args, **kwargs);
# the others describe where it was defined or how CPython optimises it.
_CODE_FLAGS = 0x04 | 0x08


class _Describer:
    """A stable, process-independent description of a function: what it computes.

    Functions are described by their code (bytecode, constants, nested code objects,
    the names it uses), their closure values, defaults and the globals they read that are
    data or functions of the same module; `functools.partial` by its function, arguments
    and keywords; arrays and tensors by a digest of their dtype, shape and bytes
    (variables, which are state, by their shape and dtype); other objects by their type
    (and `get_config()` when they have one). No
    `id()` or memory address enters it, so the same function matches in a fresh process.
    """

    def __init__(self):
        self._active = {}

    def describe(self, value):
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            return [type(value).__name__, repr(value)]
        key = id(value)
        if key in self._active:  # a cycle (e.g. a recursive function): its depth
            return ["cycle", self._active[key]]
        self._active[key] = len(self._active)
        try:
            return self._describe(value)
        finally:
            del self._active[key]

    def _describe(self, value):
        if isinstance(value, np.generic):
            return [type(value).__name__, repr(value.item())]
        if isinstance(value, types.CodeType):
            return self._code(value)
        if isinstance(value, functools.partial):
            return ["partial", self.describe(value.func),
                    [self.describe(v) for v in value.args],
                    sorted([k, self.describe(v)] for k, v in value.keywords.items())]
        if isinstance(value, types.FunctionType):
            return self._function(value)
        if isinstance(value, types.MethodType):
            return ["method", self.describe(value.__func__), self.describe(value.__self__)]
        if isinstance(value, (types.BuiltinFunctionType, type)):
            return ["named", getattr(value, "__module__", None) or "",
                    getattr(value, "__qualname__", None) or getattr(value, "__name__", "")]
        if isinstance(value, types.ModuleType):
            return ["module", value.__name__]
        if isinstance(value, (list, tuple)):
            return [type(value).__name__, [self.describe(v) for v in value]]
        if isinstance(value, (set, frozenset)):
            return [type(value).__name__,
                    sorted(repr(self.describe(v)) for v in value)]
        if isinstance(value, dict):
            return ["dict", sorted([repr(self.describe(k)), self.describe(v)]
                                   for k, v in value.items())]
        if hasattr(value, "assign") and hasattr(value, "shape") and hasattr(value, "dtype"):
            # A variable is state (it may be the evolved model's): its kind, not values.
            return ["variable", list(value.shape), str(value.dtype)]
        if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__"):
            from keras_lrne.checkpoint import streaming_digest

            return ["array", streaming_digest(np.asarray(value))]
        kind = type(value)
        described = ["object", kind.__module__, kind.__qualname__]
        config = getattr(value, "get_config", None)
        if callable(config):
            # A get_config that needs more than the object: the type alone.
            with contextlib.suppress(Exception):
                described.append(self.describe(config()))
        return described

    def callable_object(self, value):
        """A callable instance (the fitness function itself): its class's `__call__`
        and its attributes."""
        kind = type(value)
        call = next((vars(k)["__call__"] for k in kind.__mro__ if "__call__" in vars(k)), None)
        return ["callable", kind.__module__, kind.__qualname__, self.describe(call),
                self.describe(dict(getattr(value, "__dict__", {})))]

    def _code(self, code, docstring=None):
        consts = list(code.co_consts)
        if docstring is not None and consts and consts[0] == docstring:
            consts = consts[1:]  # the docstring does not change what the function does
        return ["code", code.co_code.hex(), [self.describe(c) for c in consts],
                list(code.co_names), code.co_argcount, code.co_posonlyargcount,
                code.co_kwonlyargcount, code.co_flags & _CODE_FLAGS]

    def _function(self, fn):
        code = fn.__code__
        closure = []
        for cell in fn.__closure__ or ():
            try:
                closure.append(self.describe(cell.cell_contents))
            except ValueError:  # an empty cell
                closure.append(["empty"])
        # Globals the code reads: data, and functions of the same module (by what they
        # are); names from elsewhere (modules, library functions) by their names.
        names = set()
        pending = [code]
        while pending:
            current = pending.pop()
            names.update(current.co_names)
            pending += [c for c in current.co_consts if isinstance(c, types.CodeType)]
        namespace = fn.__globals__
        used = []
        for name in sorted(n for n in names if n in namespace):
            value = namespace[name]
            if isinstance(value, types.FunctionType) and value.__module__ != fn.__module__:
                used.append([name, "function", _qualified_name(value)])
            else:
                used.append([name, self.describe(value)])
        return ["function", self._code(code, fn.__doc__), closure,
                self.describe(fn.__defaults__), self.describe(fn.__kwdefaults__), used]


def function_digest(fn):
    """A SHA-256 of what `fn` computes, the same in every process (see `_Describer`)."""
    describer = _Describer()
    if isinstance(fn, (types.FunctionType, types.MethodType, functools.partial,
                       types.BuiltinFunctionType, type)):
        description = describer.describe(fn)
    else:
        description = describer.callable_object(fn)
    text = repr(description)
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


def member_value(value, fn):
    """A Python fitness's return `value` as a float, or an exception saying why it is not
    a usable fitness (the member then fails).

    Real numbers only: Python `int` and `float`, NumPy integer and floating scalars, and
    0-d integer or floating arrays and tensors. Not `bool` (cast it if a pass/fail score
    is meant), strings (`"0.5"`), complex numbers, other shapes or None; and the value
    must be finite (NaN and inf rank last but count as failures).

    Returns:
        `(fitness, error)`: the float and None, or NaN and a `TypeError`/`ValueError`
        naming `fn` and what it returned.
    """
    name = _qualified_name(fn)
    returned = None
    if isinstance(value, (bool, np.bool_)):
        returned = f"a {type(value).__name__} ({value!r})"
    elif isinstance(value, numbers.Real):
        number = float(value)
    elif hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__"):
        array = np.asarray(value)
        if array.shape == () and array.dtype.kind in "iuf":
            number = float(array)
        else:
            returned = f"a {type(value).__name__} of shape {array.shape} and dtype {array.dtype}"
    else:
        returned = f"a {type(value).__name__} ({value!r:.60})"
    if returned is not None:
        return math.nan, TypeError(
            f"The fitness function {name} returned {returned}; a fitness must be a real "
            "number: a Python int or float, a NumPy scalar, or a 0-d array or tensor of "
            "integers or floats (convert with float(...) if this value is meant)."
        )
    if not math.isfinite(number):
        return math.nan, ValueError(f"The fitness function {name} returned {number!r}")
    return number, None


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
      with `model` holding that member's weights; it returns a real number (a Python
      int or float, a NumPy scalar, or a 0-d array or tensor; not a bool, a string or a
      complex number: such a member fails, as below). Any code is
      allowed: `model.predict`, a simulator, a subprocess. Under
      `keras_lrne.distribution.RayWorkers` the calls run in the workers (which rebuild
      their members from seeds), so `fn` must be importable there (a module-level
      function; one defined in the script that calls `evolve()` is shipped by Ray).

    Higher fitness is better with `maximize=True`. `evolve()` logs, per generation,
    `fitness` (of the weights the model holds: the GA's elite, OpenES's mean),
    `mean_fitness` and `median_fitness` (over members with a finite fitness) and `loss`
    (`-fitness` when maximising, `fitness` otherwise), so `EarlyStopping`,
    `ModelCheckpoint` and keras-tuner work on `loss` unchanged; the Python form also logs
    `failed_members`. NaN or infinite fitness ranks last. In the Python form a member
    fails when `fn` raises, or returns NaN, inf or something other than a real number:
    it ranks last, it is counted in `failed_members` and one warning per generation
    names the first failure, unless every member fails: then the run stops with the
    first failure.

    A resumed run (`keras.callbacks.BackupAndRestore`) must use the same fitness: the
    run's signature holds the form, the direction, a digest of `data` and what identifies
    the objective. By default that is `fn`'s qualified name and a digest of what `fn` is:
    its code (bytecode, constants, nested functions), closure values, defaults, the
    globals it reads that are data or functions of its own module, and for a
    `functools.partial` its function, arguments and keywords (arrays by their bytes). Two
    different lambdas or partials differ; the same function matches in a fresh process
    (of the same Python version). A resume with another function is refused, naming the
    difference. Pass `name=` to identify the objective by a name of yours instead (in
    both runs): a resume then checks only the name, e.g. after a refactoring that
    changes the code but not the objective.

    Args:
        fn: the fitness function (see the two forms above).
        data: for the compiled form, `x` or `(x, y)` (arrays or tensors): a tuple must
            be `(x, y)`; pass several inputs as a list or a dict (`data=([x1, x2], y)`);
            a list or dict is never read as targets. Generators are not supported;
            sample weights go with the targets (`(x, {"y": y, "weight": w})`, for `fn`
            to apply). None for the Python form.
        per_member: False (compiled form) or True (Python form).
        maximize: True if higher fitness is better (default), False to minimise.
        name: None (default: the objective is identified by `fn`'s qualified name and a
            digest of its code and values), or a non-empty string that identifies the
            objective instead, for resumes (see above) and in `repr`.

    Example:

    >>> def accuracy(logits, labels):
    ...     predicted = keras.ops.argmax(logits, axis=-1)
    ...     return keras.ops.mean(keras.ops.cast(predicted == labels, "float32"))
    >>> history = keras_lrne.evolve(
    ...     model, keras_lrne.tasks.Fitness(accuracy, data=(x, y)), generations=20)
    >>> history.history["fitness"][-1]
    """

    def __init__(self, fn, data=None, per_member=False, maximize=True, name=None):
        if not callable(fn):
            raise ValueError(
                "Received an invalid value for `fn`, expected a function: "
                "`fn(outputs)` or `fn(outputs, y)` (per_member=False), or `fn(model)` "
                f"(per_member=True). Received: fn={fn!r}"
            )
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(
                "Received an invalid value for `name`, expected None or a non-empty string "
                f"that identifies the objective. Received: name={name!r}"
            )
        self.fn = fn
        self.name = name
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
            pair = isinstance(data, tuple) and not hasattr(data, "_fields")
            if pair and len(data) != 2:
                shapes = [tuple(np.shape(v)) if not isinstance(v, (dict, list, tuple))
                          else type(v).__name__ for v in data]
                raise ValueError(
                    "Received an invalid value for `data`: a tuple is read as `(x, y)`, "
                    f"inputs and targets, but this one has {len(data)} elements. Pass "
                    "several inputs as a list or a dict keyed by input name, inside the "
                    "tuple: `data=([x1, x2], y)`. Sample weights are not a third element: "
                    "pass them with the targets, `data=(x, {'y': y, 'weight': w})`, and "
                    f"weight inside `fn`. Received: data of {len(data)} elements "
                    f"with shapes {shapes}"
                )
            if pair:
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
        import keras
        from keras import ops

        fn, maximize, with_targets = self.fn, self.maximize, self.has_targets
        name = _qualified_name(fn)

        def loss(y, outputs):
            value = fn(outputs, y) if with_targets else fn(outputs)
            if value is None or isinstance(value, (str, bytes, dict, list, tuple, set)):
                raise ValueError(
                    f"The fitness function {name} must return a scalar tensor (a number "
                    f"computed with `keras.ops`) for one member's batch, but returned a "
                    f"{type(value).__name__}: {value!r:.100}"
                )
            value = ops.convert_to_tensor(value)
            dtype = keras.backend.standardize_dtype(value.dtype)
            if not (dtype.startswith(("float", "int", "uint")) or dtype == "bfloat16"):
                cast = ", e.g. with `keras.ops.cast(value, 'float32')`" if dtype == "bool" else ""
                raise ValueError(
                    f"The fitness function {name} must return a real number (a float or "
                    f"integer scalar tensor{cast}), but returned a tensor of dtype {dtype}."
                )
            if len(value.shape) != 0:
                raise ValueError(
                    f"The fitness function {name} must return a scalar for one member's "
                    f"batch, but returned a tensor of shape {tuple(value.shape)}. Reduce "
                    "it, e.g. with `keras.ops.mean`."
                )
            return objective_value(ops.cast(value, "float32"), maximize)

        return loss

    def fingerprint(self):
        """The form, the direction, a digest of `data`, and the objective: `name` when
        given, else `fn`'s qualified name and a digest of what `fn` is (its code and
        values, `function_digest`)."""
        if self.name is not None:
            objective = {"name": self.name}
        else:
            # Short, so that a message naming a difference shows it whole.
            objective = {"fn": _qualified_name(self.fn),
                         "fn_code": f"{function_digest(self.fn)[:16]} of {_short_name(self.fn)}"}
        return {"class": type(self).__name__, **objective,
                "per_member": self.per_member, "maximize": self.maximize,
                "data": None if self.x is None else data_digest(self.x, self.y)}

    def get_config(self):
        return {"fn": _qualified_name(self.fn), "per_member": self.per_member,
                "maximize": self.maximize, "name": self.name}

    def __repr__(self):
        samples = "" if self.x is None else f", data of {self.num_samples} samples"
        name = "" if self.name is None else f", name={self.name!r}"
        return (f"Fitness({_qualified_name(self.fn)}{samples}, per_member={self.per_member}, "
                f"maximize={self.maximize}{name})")

