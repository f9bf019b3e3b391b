"""Population tensors <-> model variables, and the compiled population functions.

A population is a `keras_lrne.genome.PopulationRecipe` (what the built-in strategies
ask for: shared weights plus per-member seeds, expanded one chunk at a time inside the
compiled call), or a list with one tensor per *evolvable* trainable variable of a model,
each with a leading population axis `(P, *variable.shape)`. Frozen trainable variables
(normalization layers by default) and non-trainable variables are shared by all members.

The hot function is compiled once per run by the active backend (`keras_lrne.backend`)
and never retraces between generations:

- `evaluate(population, frozen, non_trainable, x, y) -> losses (P,)`: a sequential map over
  population chunks of `chunk_size` members; inside a chunk a loop over data batches, and
  inside that one vectorised (`keras.ops.vectorized_map`) `model.stateless_call` of all the
  chunk's members. `evaluate_group` does the same for a slice of the population (one
  progress step).

Strategies compile their own operators (mutation, sampling, updates).
"""


import keras
import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome

# The genome's names stay importable from here, as in earlier releases.
from keras_lrne.genome import (  # noqa: F401
    NORMALIZATION_LAYERS,
    LowRankMembers,
    VariableSpec,
    collect_variable_specs,
    derive_seed,
    initial_member,
    initial_population,
    materialize,
)
from keras_lrne.layers import _low_rank, _vectorized

# Bytes the evaluation of one chunk step may use on CPU: about a last-level cache (larger
# steps are slower, smaller ones gain nothing: see benchmarks/README.md).
CPU_MEMORY_BUDGET = 64 * 2**20


def largest_divisor_at_most(n, cap):
    """The largest divisor of `n` that is <= `cap` (at least 1)."""
    cap = max(1, min(int(cap), int(n)))
    for d in range(cap, 0, -1):
        if n % d == 0:
            return d
    return 1


def memory_budget():
    """Bytes one evaluation chunk may use: 1/8 of the accelerator's free memory (measured
    when the run is planned), or 64 MiB on CPU."""
    device = lrne_backend.get().device_memory_bytes()
    return CPU_MEMORY_BUDGET if device is None else int(device) // 8


def plan_chunks(population_size, num_samples, bytes_per_member_sample,
                population_batch_size=None, batch_size=None, budget=None):
    """Chooses (population chunk C, data batch B) so one chunk step fits the budget.

    `B` always divides `num_samples`. `C` is `population_batch_size` when given; otherwise
    a divisor of the population size when a large one exists (no padding), else the cap.
    """
    budget = memory_budget() if budget is None else budget
    max_member_samples = max(1, int(budget // max(1, bytes_per_member_sample)))
    if batch_size is None:
        c_guess = population_batch_size or min(population_size, 16)
        batch_size = largest_divisor_at_most(num_samples, max(1, max_member_samples // c_guess))
    elif num_samples % batch_size:
        batch_size = largest_divisor_at_most(num_samples, batch_size)
    if population_batch_size is None:
        cap = max(1, min(population_size, max_member_samples // batch_size))
        divisor = largest_divisor_at_most(population_size, cap)
        population_batch_size = divisor if divisor * 2 > cap else cap
    return int(min(population_batch_size, population_size)), int(batch_size)


def split_population(population):
    """`(members, means)`: what the compiled evaluation takes of a population.

    `members` has one entry per variable with a leading member axis: the dense tensor, or
    the `(left, right)` factors of a `LowRankMembers` entry; `means` lists the shared
    means of the `LowRankMembers` entries, in order (empty for a dense population).
    """
    members, means = [], []
    for entry in population:
        if isinstance(entry, LowRankMembers):
            members.append((entry.left, entry.right))
            means.append(entry.mean)
        else:
            members.append(entry)
    return members, means


def batch_data(array, batch_size):
    """Reshapes `(N, ...)` to `(N // batch_size, batch_size, ...)`; a dict or list of
    arrays (several inputs or outputs) keeps its structure, every array reshaped."""
    if array is None:
        return None
    if isinstance(array, dict):
        return {key: batch_data(value, batch_size) for key, value in array.items()}
    if isinstance(array, (list, tuple)) and array and _is_array_list(array):
        return [batch_data(value, batch_size) for value in array]
    array = np.asarray(array)
    return array.reshape((array.shape[0] // batch_size, batch_size) + array.shape[1:])


def _is_array_list(values):
    return all(isinstance(v, (dict, list, tuple)) or hasattr(v, "shape") for v in values)


def to_tensors(value):
    """Converts an array, or a dict/list of arrays, to backend tensors (None stays)."""
    if value is None:
        return None
    return keras.tree.map_structure(ops.convert_to_tensor, value)


def batch(value, k):
    """Batch `k` of batched data (`batch_data`), whatever its structure."""
    if value is None:
        return None
    return keras.tree.map_structure(lambda t: t[k], value)


def num_samples(value):
    """The leading dimension of an array, or of the first array of a dict/list."""
    return int(np.shape(keras.tree.flatten(value)[0])[0])


def objective_for(model, task):
    """The per-member objective `(y, outputs) -> scalar` a task brings (a
    `keras_lrne.tasks.Fitness`'s), or None: the model's compiled loss is used."""
    objective = getattr(task, "objective", None)
    return objective() if callable(objective) else None


def _single_loss(loss):
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    bk = lrne_backend.get()

    def mean_loss(y_true, y_pred):
        value = ops.mean(ops.cast(fn(y_true, y_pred), "float32"))
        return bk.unscale_replica_loss(value, fn)

    return mean_loss


def _output_names(model):
    try:
        return list(model.output_names)
    except (AttributeError, ValueError):
        return []


def loss_weights(model):
    """The `loss_weights` given to `compile()`, or None."""
    config = getattr(model, "_compile_config", None)
    config = getattr(config, "config", None) or {}
    return config.get("loss_weights")


def mean_loss_fn(loss, model=None):
    """A function `(y_true, y_pred) -> scalar mean loss` from what `compile()` received.

    For a model with several outputs, `loss` may be one loss (applied to every output),
    a list (one per output, in order) or a dict keyed by output name (as `compile()`
    takes it; None skips an output); the targets are then a list or a dict of arrays, and
    the loss is the sum over outputs, weighted by `compile(loss_weights=...)`.

    None when no loss was given (environment tasks compute their own losses).
    """
    if loss is None:
        return None
    names = _output_names(model) if model is not None else []
    weights = loss_weights(model) if model is not None else None
    if not isinstance(loss, (dict, list, tuple)) and not weights:
        return _single_loss(loss)

    def per_output(value, kind):
        """A list aligned with the flat outputs, from a single value, list or dict."""
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ValueError(
                    f"Received `{kind}` keys that are not outputs of the model: {unknown}. "
                    f"The model's outputs are {names}. Received: {kind}={value!r}"
                )
            return [value.get(name) for name in names]
        if isinstance(value, (list, tuple)):
            return list(value)
        return None

    losses = per_output(loss, "loss")
    weight_list = per_output(weights, "loss_weights") if weights is not None else None

    def structured(y_true, y_pred):
        if isinstance(y_pred, dict):
            keys = names if set(names) == set(y_pred) else list(y_pred)
            predictions = [y_pred[k] for k in keys]
        else:
            predictions = list(y_pred) if isinstance(y_pred, (list, tuple)) else [y_pred]
        count = len(predictions)
        if isinstance(y_true, dict):
            keys = names if set(names) <= set(y_true) and names else list(y_true)
            targets = [y_true[k] for k in keys]
        else:
            targets = list(y_true) if isinstance(y_true, (list, tuple)) else [y_true]
        fns = losses if losses is not None else [loss] * count
        ws = weight_list if weight_list is not None else [None] * count
        if len(fns) != count or len(targets) != count or len(ws) != count:
            raise ValueError(
                f"The model has {count} outputs, but received {len(fns)} losses, "
                f"{len(targets)} targets and {len(ws)} loss weights: give one of each per "
                "output (a list in output order, or a dict keyed by output name). "
                f"Received: loss={loss!r}, loss_weights={weights!r}"
            )
        total = None
        for fn, w, target, prediction in zip(fns, ws, targets, predictions):
            if fn is None:
                continue
            value = _single_loss(fn)(target, prediction)
            if w is not None:
                value = value * float(w)
            total = value if total is None else total + value
        return total

    return structured


class PopulationFunctions:
    """The compiled population `evaluate` functions of one model and run.

    Args:
        model: a built Keras model.
        specs: `collect_variable_specs(model)`.
        loss: the loss given to `compile()` (None for environment tasks, which compile
            their own policy calls).
        chunk_size: members evaluated together in one vectorised call.
        group_size: members per device and host call of `evaluate_group` (a multiple of
            `chunk_size`; one progress-bar step); None: no `evaluate_group`.
        distribution: a `keras_lrne.distribution.PopulationParallel`, or None (one
            device).
        population_size: members per generation (needed with `distribution`: the
            population is padded to a multiple of the device count).
        objective: `(y, outputs) -> scalar` to minimise per member and batch, in place of
            the loss (e.g. minus a `keras_lrne.tasks.Fitness`'s function); `y` is None
            for data without targets.

    Attributes:
        evaluate: `(population, frozen, non_trainable, x, y) -> (P,)` losses, on the
            default device (also used for validation).
        evaluate_group: `(population, start, frozen, non_trainable, x, y)`: the losses of
            members `start .. start + group_size - 1` of every device's share of the
            population, `(num_devices * group_size,)` in device order (one device: of
            the population itself).
    """

    def __init__(self, model, specs, loss, chunk_size, group_size=None, distribution=None,
                 population_size=None, objective=None):
        self.model = model
        self.specs = specs
        self.chunk_size = int(chunk_size)
        self.group_size = None if group_size is None else int(group_size)
        self.distribution = distribution
        self.num_devices = 1 if distribution is None else distribution.num_devices
        self._loss_fn = objective if objective is not None else mean_loss_fn(loss, model)
        self._evolvable = [s.index for s in specs if s.evolvable]
        self._frozen = [s.index for s in specs if not s.evolvable]
        self._plan_low_rank(model)
        self.trace_counts = {"evaluate": 0}
        bk = lrne_backend.get()
        self._backend = bk
        self.evaluate = self.evaluate_group = None
        self._population_size = population_size
        # Compiled recipe evaluations, per (recipe `expand`, members per call).
        self._recipe_functions = {}
        if self._loss_fn is None:
            return
        # Each run compiles its own functions, traced once; the backend keeps TensorFlow
        # from counting many runs' traces together as "retracing" (see
        # `keras_lrne.backend.tensorflow.tf_function`).
        def evaluate(*args):
            return self._evaluate(*args)

        def evaluate_group(population, means, start, *args):
            group = keras.tree.map_structure(
                lambda v: ops.slice(v, [start] + [0] * (len(v.shape) - 1),
                                    [self.group_size, *v.shape[1:]]), population)
            return self._evaluate(group, means, *args)

        def chunk(members, means, *args):
            self.trace_counts["evaluate"] += 1
            return self._chunk_losses(members, means, *args)

        # One chunk of expanded members: compiled alone (a host recipe's chunks) and
        # called from the recipe evaluations (XLA inside their graph on TensorFlow).
        self._chunk = bk.compile_chunk(chunk)
        compiled = bk.compile(evaluate)
        self._dense_evaluate = compiled
        self.evaluate = self._evaluate_any
        if self.group_size is None:
            return
        if distribution is None:
            compiled_group = bk.compile(evaluate_group)
        else:
            rows = self.num_devices * distribution.members_per_device(population_size)
            compiled_group = bk.per_device(
                evaluate_group, distribution.handle,
                (True, False, False, False, False, False, False), rows=rows)
        self._dense_group = compiled_group
        self.evaluate_group = self._evaluate_group_any

    # -- dispatch: dense populations and recipes ------------------------------------
    def _evaluate_any(self, population, *args):
        """`evaluate`: the losses of every member of `population` (a list of tensors,
        `LowRankMembers` entries allowed, or a `keras_lrne.genome.PopulationRecipe`)."""
        if isinstance(population, genome.PopulationRecipe):
            if population.host:
                return self._host_losses(population, np.arange(population.size), *args)
            fn = self._recipe_function(population.expand, population.size)
            return fn(population.shared, list(population.records),
                      np.asarray(0, np.int32), *args)
        # A population may hold `LowRankMembers` entries: the compiled functions take
        # their per-member factors (split along the member axis) and shared means apart.
        return self._dense_evaluate(*split_population(population), *args)

    def _evaluate_group_any(self, population, start, *args):
        """`evaluate_group` (see the class docstring), for a dense population or a
        recipe (whose members are expanded chunk by chunk inside the compiled call)."""
        if isinstance(population, genome.PopulationRecipe):
            if population.host:
                return self._host_group(population, int(start), *args)
            fn = self._recipe_function(population.expand, self.group_size, group=True)
            return fn(population.shared, list(population.records),
                      np.asarray(start, np.int32), *args)
        return self._dense_group(*split_population(population), start, *args)

    def _recipe_function(self, expand, rows, group=False):
        """The compiled evaluation of `rows` members of a recipe made by `expand`,
        from member `start` (of every device's share with a distribution)."""
        key = (expand, rows, group)
        fn = self._recipe_functions.get(key)
        if fn is not None:
            return fn
        bk = self._backend

        def evaluate_recipe(shared, records, start, *args):
            records = [ops.slice(r, [start] + [0] * (len(r.shape) - 1),
                                 [rows, *r.shape[1:]]) for r in records]
            return self._evaluate_recipe(expand, shared, records, *args)

        if group and self.distribution is not None:
            total = self.num_devices * self.distribution.members_per_device(
                self._population_size)
            fn = bk.per_device(evaluate_recipe, self.distribution.handle,
                               (False, True, False, False, False, False, False),
                               rows=total, expands=True)
        else:
            fn = bk.compile_expanding(evaluate_recipe)
        self._recipe_functions[key] = fn
        return fn

    def _host_losses(self, recipe, members, frozen, non_trainable, x, y):
        """The losses of `members` of a host recipe: each chunk expanded on the host,
        then evaluated by the compiled chunk function (the last chunk padded)."""
        chunk = min(self.chunk_size, len(members))
        out = []
        for begin in range(0, len(members), chunk):
            rows = members[begin: begin + chunk]
            padded = np.resize(rows, chunk)
            values, means = split_population(recipe.rows(padded))
            losses = self._backend.to_numpy(self._chunk(values, means, frozen,
                                                        non_trainable, x, y))
            out.append(losses[: len(rows)])
        return np.concatenate(out)

    def _host_group(self, recipe, start, *args):
        """`evaluate_group` of a host recipe, laid out as the compiled groups are: for
        each device, its members `start .. start + group_size - 1`."""
        per_device = (self.distribution.members_per_device(self._population_size)
                      if self.distribution is not None else recipe.size)
        parts = []
        for device in range(self.num_devices):
            rows = device * per_device + np.arange(start, start + self.group_size)
            parts.append(self._host_losses(recipe, np.minimum(rows, recipe.size - 1),
                                           *args))
        return np.concatenate(parts)

    # -- helpers -------------------------------------------------------------------
    def _plan_low_rank(self, model):
        """Which evolvable variables' low-rank perturbations the layers add without
        materialising them, and which layers' LoRA adapters run unmerged."""
        owners = genome.variable_owners(model)
        variables = model.trainable_variables
        self._variables = [variables[i] for i in self._evolvable]
        self._owners = [owners.get(id(v)) for v in self._variables]
        self._unmaterialized = [_low_rank.supports(layer, v)
                                for layer, v in zip(self._owners, self._variables)]
        layers = {id(layer): layer for layer in owners.values()}
        self._lora_layers = [layer for layer in layers.values()
                             if _low_rank.patches_lora(layer)]

    def _member_values(self, member, means):
        """The evolved values of one member (inside the vectorised map) and the
        perturbations `{id(variable): (left, right)}` its layers add unmaterialised."""
        values, deltas, means = [], {}, iter(means)
        for entry, variable, direct in zip(member, self._variables, self._unmaterialized):
            if not isinstance(entry, (tuple, list)):
                values.append(entry)
                continue
            left, right = entry
            mean = next(means)
            if direct:
                values.append(mean)
                deltas[id(variable)] = (left, right)
            else:  # a layer that cannot take it apart: this member's weights, materialised
                delta = ops.reshape(ops.matmul(left, ops.transpose(right)), mean.shape)
                values.append(mean + ops.cast(delta, mean.dtype))
        return values, deltas

    def _patched_layers(self, population):
        """The Keras layers whose calls run unmerged and unmaterialised in this trace."""
        layers = {id(layer): layer for layer in self._lora_layers}
        for entry, layer, direct in zip(population, self._owners, self._unmaterialized):
            if (isinstance(entry, (tuple, list)) and direct
                    and not hasattr(layer, "_lrne_unmaterialized")):
                layers[id(layer)] = layer
        return list(layers.values())

    def frozen_values(self):
        variables = self.model.trainable_variables
        return [variables[i].value for i in self._frozen]

    def non_trainable_values(self):
        return [v.value for v in self.model.non_trainable_variables]

    def assemble(self, member, frozen):
        """All trainable values in `model.trainable_variables` order: `member`'s evolved
        ones (one per evolvable variable) and the shared `frozen` ones."""
        values = [None] * len(self.specs)
        for i, v in zip(self._evolvable, member):
            values[i] = v
        for i, v in zip(self._frozen, frozen):
            values[i] = v
        return values

    # -- compiled bodies -----------------------------------------------------------
    def _evaluate(self, population, means, frozen, non_trainable, x, y):
        self.trace_counts["evaluate"] += 1
        population = list(population)
        means = list(means)
        size = keras.tree.flatten(population)[0].shape[0]
        chunk = min(self.chunk_size, size)
        num_chunks = -(-size // chunk)
        padded = num_chunks * chunk
        if padded != size:
            population = keras.tree.map_structure(
                lambda v: ops.concatenate([v, v[: padded - size]], axis=0), population)

        def chunk_losses(members):
            return self._chunk_losses(members, means, frozen, non_trainable, x, y)

        if num_chunks == 1:
            losses = chunk_losses(population)
        else:
            stacked = keras.tree.map_structure(
                lambda v: ops.reshape(v, (num_chunks, chunk) + tuple(v.shape[1:])), population)
            losses = self._backend.map_chunks(chunk_losses, stacked, (chunk,))
        return ops.reshape(losses, (-1,))[:size]

    def _evaluate_recipe(self, expand, shared, records, frozen, non_trainable, x, y):
        """The losses of the members `records` describe: each chunk of
        `chunk_size` members is expanded from `shared` by `expand`, evaluated and
        dropped (the last chunk is padded with the first members)."""
        size = int(records[0].shape[0])
        chunk = min(self.chunk_size, size)
        num_chunks = -(-size // chunk)
        padded = num_chunks * chunk
        if padded != size:
            records = [ops.concatenate([r, r[: padded - size]], axis=0) for r in records]
        bk = self._backend

        def chunk_losses(chunk_records):
            members, means = split_population(expand(shared, *chunk_records))
            # The members exactly as expanded (no fusion into the evaluation).
            members = bk.barrier(members)
            return self._chunk(members, means, frozen, non_trainable, x, y)

        if num_chunks == 1:
            losses = chunk_losses(records)
        else:
            stacked = [ops.reshape(r, (num_chunks, chunk) + tuple(r.shape[1:]))
                       for r in records]
            losses = bk.map_chunks(chunk_losses, stacked, (chunk,))
        return ops.reshape(losses, (-1,))[:size]

    def _chunk_losses(self, members, means, frozen, non_trainable, x, y):
        """The mean loss of each member of one chunk over every batch of `x`: inside,
        one vectorised (`keras.ops.vectorized_map`) `stateless_call` of all the
        chunk's members per batch."""
        members = list(members)
        means = list(means)
        chunk = keras.tree.flatten(members)[0].shape[0]
        patched = self._patched_layers(members)
        num_batches = keras.tree.flatten(x)[0].shape[0]
        # `stateless_call` forwards keyword arguments to `call()` as they are.
        kwargs = {"training": False} if getattr(self.model, "_call_has_training_arg", True) else {}

        def batch_losses(xb, yb):
            def member_loss(member):
                values, deltas = self._member_values(member, means)
                trainable = self.assemble(values, frozen)
                with _low_rank.deltas(deltas):
                    y_pred, _ = self.model.stateless_call(trainable, non_trainable, xb,
                                                          **kwargs)
                return self._loss_fn(yb, y_pred)

            with (_vectorized.member_calls(), _low_rank.patched_calls(patched),
                  lrne_backend.get().quiet_vectorization()):
                return ops.vectorized_map(member_loss, members)

        if num_batches == 1:
            return batch_losses(batch(x, 0), batch(y, 0))

        def body(k, total):
            return total + batch_losses(batch(x, k), batch(y, k))

        total = ops.fori_loop(0, num_batches, body, ops.zeros((chunk,), "float32"))
        return total / num_batches


def estimate_bytes_per_member_sample(model, x_sample):
    """A rough device-memory cost of evaluating one member on one sample (float32).

    The output (e.g. logits) dominates for language models; it is counted four times
    (logits, softmax, log-softmax and a temporary), inputs and a margin once more.
    """
    first = keras.tree.map_structure(lambda a: a[:1], x_sample)
    y = model(first, training=False)
    out = sum(int(np.prod(t.shape[1:])) for t in keras.tree.flatten(y))
    inp = sum(int(np.prod(np.shape(a)[1:])) for a in keras.tree.flatten(x_sample))
    return 4 * (4 * out + 64 * inp) + 4096
