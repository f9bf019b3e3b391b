"""The engine: one evolution run and its generation step.

`evolve(model, ...)` is to neuroevolution what `fit()` is to gradient descent, and
`Run.step()` plays the role of Keras' `train_step`: ask the strategy for a population,
evaluate it, tell the strategy the losses, load the best weights into the model.
`keras_lrne.evolve(model, ...)` (any built Keras model) and `model.evolve(...)` (on
`keras_lrne.Model`, `keras_lrne.Sequential` and `EvolveMixin` models) are this function.

A member's weights flow one way: the strategy (`keras_lrne.strategies`) makes the
population from seeds (`keras_lrne.genome`), the evaluator (`keras_lrne.evaluators`)
scores it with the compiled population functions (`keras_lrne.population`) or the
rollout engine (`keras_lrne.rollout`), and the losses go back to the strategy through
this module. Tasks (`keras_lrne.tasks`) only describe data, environments or fitness;
the engine picks the evaluator.
"""

import inspect
import json
import time
import warnings

import keras
import numpy as np

from keras_lrne import checkpoint, genome
from keras_lrne import population as pop
from keras_lrne._validation import check_bool, check_int
from keras_lrne.distribution import PopulationParallel, RayWorkers
from keras_lrne.evaluators import (
    EnvironmentEvaluator,
    Progress,
    PythonFitnessEvaluator,
    SupervisedEvaluator,
    check_two_stage,
    compiled_metrics,
    objective_logs,
    plan_groups,
    tokens_per_sample,
)
from keras_lrne.lineage import Lineage
from keras_lrne.rollout import RolloutEvaluator
from keras_lrne.strategies import GA, Strategy
from keras_lrne.tasks.base import (
    ArrayTask,
    Task,
    as_validation,
    check_sparse_labels,
    check_target_shapes,
    data_digest,
    fitness_maximize,
    is_structure,
    leaves,
    task_kind,
)


def _check_callbacks(callbacks):
    """`callbacks` must be None or a list/tuple of `keras.callbacks.Callback`, as in `fit()`."""
    if callbacks is None:
        return
    if not isinstance(callbacks, (list, tuple)):
        raise ValueError(
            "Received an invalid value for `callbacks`, expected a list of "
            "`keras.callbacks.Callback` (wrap a single callback in a list: "
            f"`callbacks=[callback]`). Received: callbacks={callbacks!r}"
        )
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, keras.callbacks.Callback):
            raise ValueError(
                "Received an invalid value for `callbacks`, expected a list of "
                f"`keras.callbacks.Callback`, but element {i} is a "
                f"{type(callback).__name__}. Received: callbacks[{i}]={callback!r:.200}"
            )



def _trailing_ones_removed(shape):
    shape = tuple(shape)
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape



def _model_signature(model):
    """Every layer's class and config (without its auto-generated name), in order."""
    layers = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        try:
            config = dict(layer.get_config())
        except NotImplementedError:
            config = {}
        config.pop("name", None)
        layers.append([layer.__class__.__name__, config])
    return layers


def _loss_signature(loss):
    if loss is None or isinstance(loss, str):
        return loss
    try:
        return keras.saving.serialize_keras_object(loss)
    except Exception:  # an object Keras cannot serialise: its type and repr
        return f"{type(loss).__qualname__}: {loss!r}"


def _run_settings(seed, strategy, run, task, model, validation_data, validation,
                  freeze_normalization):
    """The run's signature: a resume must match it exactly (mismatches are named)."""
    settings = {
        "seed": int(seed),
        "freeze_normalization": bool(freeze_normalization),
        "strategy": {"class": strategy.__class__.__name__, **strategy.get_config()},
        # Short names and shapes: auto-generated layer names differ between processes.
        "variables": [[s.path.split("/")[-1], list(s.shape)] for s in run.evolvable],
        "task": task.fingerprint(),
        "model": _model_signature(model),
        "loss": _loss_signature(getattr(model, "loss", None)),
        "loss_weights": _loss_signature(pop.loss_weights(model)),
        "validation_data": (None if validation_data is None or validation is None
                            else data_digest(*validation)),
    }
    return json.loads(json.dumps(settings, default=str))


def _set_csv_columns(callbacks, logs):
    """Gives every `CSVLogger` that has no columns yet exactly the keys of `logs`.

    Keras' `CSVLogger` adds an empty `val_<key>` column for every key when the first
    row has no validation key (as for environment tasks); evolve() logs what it logs.
    """
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.CSVLogger) and callback.keys is None:
            callback.keys = sorted(logs)


def _is_python_fitness(task):
    return task_kind(task) == "python_fitness"


def _is_fitness(task):
    return fitness_maximize(task) is not None


class Run:
    """One `evolve()` run: what it builds once, and its generation step (`step`).

    Also what `model.evolution_run` returns, for inspection.

    Attributes:
        model: the model.
        strategy: the strategy.
        seed: the run seed.
        specs: `VariableSpec`s of every trainable variable; `evolvable`: those evolved.
        functions: the compiled population functions (`PopulationFunctions`).
        distribution: the `PopulationParallel` or `RayWorkers` (None: one device).
        num_members: members per generation (`strategy.num_members_for(evolvable)`).
        members_per_device: members each device evaluates (the population size on one).
        chunk_size, batch_size: members per vectorised call, samples per call.
        group_size, groups: members per device and progress step, and the steps'
            `(start, skip)` within each device's share.
        bytes_per_sample: the planner's memory estimate per member and sample.
        validation: `(x_val, y_val)` or None; `validation_batch_size`: samples per
            call of its evaluation.
        lineage: the run's `Lineage`.
        evaluator: the evaluator the engine picked (`make_evaluator`).
    """

    def __init__(self, model, strategy, seed, freeze_normalization, num_samples=1,
                 bytes_per_sample=1, validation=None, population_batch_size=None,
                 batch_size=None, distribution=None, objective=None):
        self.model, self.strategy, self.seed = model, strategy, int(seed)
        self.distribution = distribution
        self.freeze_normalization = bool(freeze_normalization)
        self.lineage = None
        # Only a PopulationParallel splits this process's evaluation over devices.
        devices = distribution if isinstance(distribution, PopulationParallel) else None
        self.specs = genome.collect_variable_specs(model, freeze_normalization)
        self.evolvable = [s for s in self.specs if s.evolvable]
        if not self.evolvable:
            raise ValueError(
                "The model has nothing to evolve: it has no trainable variables outside "
                "frozen normalization layers. Received: model with "
                f"{len(model.trainable_variables)} trainable variables"
            )
        # Known before `init` (a default population size may follow from the variables).
        self.num_members = members = strategy.num_members_for(self.evolvable)
        # Each device plans its own share (from its own memory).
        local = members if devices is None else devices.members_per_device(members)
        self.members_per_device = local
        self.chunk_size, self.batch_size = pop.plan_chunks(
            local, num_samples, bytes_per_sample,
            population_batch_size=population_batch_size, batch_size=batch_size,
        )
        self.group_size, self.groups = plan_groups(local, self.chunk_size)
        self.functions = pop.PopulationFunctions(
            model, self.specs, getattr(model, "loss", None), self.chunk_size,
            group_size=self.group_size, distribution=devices, population_size=members,
            objective=objective,
        )
        self.bytes_per_sample = bytes_per_sample
        self.validation = validation
        self.validation_batch_size = None
        if validation is not None:  # one member per call
            _, self.validation_batch_size = pop.plan_chunks(
                1, pop.num_samples(validation[0]), bytes_per_sample, population_batch_size=1)
        self.evaluator = None

    def step(self, state, generation, progress=None):
        """One generation: ask, evaluate, tell, then load the best weights.

        Args:
            state: the strategy state.
            generation: the generation's index.
            progress: a `keras_lrne.evaluators.Progress`, or None.

        Returns:
            `(state, logs)`: the new strategy state and the generation's logs (the
            evaluator's, the strategy's and the validation's).
        """
        population, state = self.strategy.ask(state)
        losses, logs = self.evaluator.evaluate(population, generation, progress)
        state, strategy_logs = self.strategy.tell(state, losses)
        logs.update(strategy_logs)
        self.lineage.record(**self.strategy.record(state))
        weights = self.strategy.best(state)
        assign(self.model, self.evolvable, weights)
        logs.update(self.evaluator.validate(weights))
        # `fitness` / `episode_return` / `val_fitness` of the held weights, once.
        logs.update(objective_logs(self.evaluator.objective, logs))
        return state, logs


def make_evaluator(run, task):
    """The evaluator of `run` on `task`: Ray workers' when the run's distribution is a
    `RayWorkers`, else a `PythonFitnessEvaluator` (Python `Fitness`),
    `SupervisedEvaluator` (data, compiled `Fitness`), `JaxEnvironmentEvaluator`
    (`JaxEnvironment`: episodes compiled on the device) or `EnvironmentEvaluator`."""
    check_two_stage(task, run.strategy)
    kind = task_kind(task)  # the one table of task kinds (`TASK_KINDS`)
    if kind == "jax_environment":
        if run.distribution is not None:
            raise ValueError(
                "A `JaxEnvironment` with a distribution is not supported yet: its episodes "
                "run as one compiled call on one device. Evolve without `distribution`. "
                f"Received: distribution={run.distribution!r}"
            )
        from keras_lrne.jax_rollout import JaxEnvironmentEvaluator

        return JaxEnvironmentEvaluator(run.model, run.functions, task, run.strategy, run.seed)
    if isinstance(run.distribution, RayWorkers):
        return run.distribution.evaluator(run, task)
    members = run.num_members
    if kind == "python_fitness":
        return PythonFitnessEvaluator(run.model, run.evolvable, task.fn, members,
                                      task.maximize)
    if kind == "supervised":
        return SupervisedEvaluator(
            run.functions, run.groups, members, run.batch_size, task.train_data,
            validation=run.validation, validation_batch_size=run.validation_batch_size,
            tokens_per_sample=tokens_per_sample(task), maximize=fitness_maximize(task))
    rollout = RolloutEvaluator(run.model, run.functions, task, members, run.seed)
    return EnvironmentEvaluator(task, run.strategy, rollout)


def assign(model, evolvable, weights):
    """Loads `weights` (one tensor per evolvable variable) into the model's variables.

    Args:
        model: the model.
        evolvable: the evolved `VariableSpec`s (`Run.evolvable`).
        weights: one tensor or array per evolvable variable.
    """
    variables = model.trainable_variables
    for spec, values in zip(evolvable, weights):
        # A copy: on JAX a variable would otherwise hold the strategy's own buffer, which
        # Keras' `evaluate()`/`fit()` donate to their compiled step (and so delete).
        variables[spec.index].assign(keras.ops.copy(values))


_assign_weights = assign  # `rebuild_member`'s argument `assign` shadows the function


def rebuild_member(model, generation, member, assign=False, **kwargs):
    """Rebuilds one member of the model's last evolution run from its seed and lineage.

    Args:
        model: a model evolved with `evolve()` (in this process).
        generation: population index (0 = initial population; population `g + 1` is the
            one made after evaluating generation `g`).
        member: member index within that population (for `OpenES`, None rebuilds
            the mean).
        assign: also load the member into the model's variables (the name
            `EvolveMixin.rebuild_member` uses; the former `assign_weights=` is still
            accepted, with a `DeprecationWarning`).

    Returns:
        A list of numpy arrays, one per evolvable trainable variable, in
        `model.trainable_variables` order.
    """
    if "assign_weights" in kwargs:
        warnings.warn("`rebuild_member(assign_weights=...)` is deprecated; use `assign=`, "
                      "as `model.rebuild_member` does.", DeprecationWarning, stacklevel=2)
        assign = kwargs.pop("assign_weights")
    if kwargs:
        raise TypeError(f"rebuild_member() got unexpected keyword arguments: {sorted(kwargs)}")
    run = getattr(model, "_evolution_run", None)
    if run is None:
        raise ValueError("`rebuild_member()` needs a model that has been evolved.")
    run.lineage.check_index(generation, member)
    records = {k: np.asarray(v) for k, v in run.lineage.records.items()}
    arrays = run.strategy.rebuild(run.evolvable, run.seed, records, generation, member,
                                  **run.lineage.rebuild_arguments())
    if assign:
        _assign_weights(model, run.evolvable, arrays)
    return arrays




def method_docstring(function):
    """The docstring of `function` (`evolve(model, ...)`) for the method
    `model.evolve(...)` (`keras_lrne.models.EvolveMixin.evolve`): its summary for the
    model itself, and without the `model` argument. One text documents both."""
    doc = inspect.cleandoc(function.__doc__)
    rest = doc.partition("\n")[2]
    summary = ("Trains the model by neuroevolution, like `fit()` trains it by gradients.\n\n"
               "The same as `keras_lrne.evolve(model, ...)`, which evolves any Keras "
               "model.")
    lines, skipping = [], False
    for line in rest.split("\n"):
        if line.startswith("    model: "):
            skipping = True
            continue
        if skipping and line.startswith("        "):
            continue
        skipping = False
        lines.append(line)
    return summary + "\n" + "\n".join(lines)


def evolve(model, x=None, y=None, validation_data=None, strategy=None, generations=1,
           callbacks=None, verbose="auto", seed=None, population_batch_size=None,
           batch_size=None, freeze_normalization=True, distribution=None):
    """Trains any Keras model by neuroevolution, like `model.fit()` trains it by gradients.

    Each generation (one "epoch" for callbacks) asks the strategy for a population,
    evaluates every member (for data: the loss given to `compile()`, in compiled,
    vectorised calls; for a `keras_lrne.tasks.Fitness`: your function; for an
    environment: episodes) and tells the strategy the losses. Before every
    `on_epoch_end` the model's variables hold the strategy's best weights
    (`strategy.best(state)`: the GA's elite, OpenES's mean), and they still do after
    `evolve()`. Within a generation the progress bar and batch-level callbacks advance per
    step, as `fit()` reports batches: a step is a group of population chunks (data; at
    most 16 per generation), a member (Python fitness) or a finished member-episode
    (environments). Callbacks with a batch frequency (`ModelCheckpoint(save_freq=N)`,
    `TensorBoard(update_freq=N)`) count these steps; use their per-epoch setting to act
    once per generation.

    The model is any built `keras.Model`: Sequential, functional (several inputs and
    outputs included), subclassed, or a KerasHub backbone. Every trainable variable
    evolves (normalization layers stay frozen by default): keras-lrne's factorized layers
    as their factors, plain Keras layers (Dense, Conv2D, Embedding, MultiHeadAttention,
    EinsumDense, ...) as full tensors whose mutations scale with their initializer's std.

    Args:
        model: a Keras model. For data, compiled with a loss (`model.compile(loss=...)`,
            one per output allowed as `compile()` takes them); a model that is not built
            yet is built on the first samples.
        x: input data: a numpy array or tensor, a dict or list of them for several
            inputs (with `y`), a finite `tf.data.Dataset` of `(x, y)` batches, or a
            `keras_lrne.tasks` task (`LanguageModeling`, `Fitness`, `Atari`, ...).
        y: targets for array input (a dict or list of arrays for several outputs); None
            otherwise.
        validation_data: `(x_val, y_val)` or a dataset of them; the loss of the
            model's weights on it is logged as `val_loss` (and the compiled metrics
            as `val_<name>`). Defaults to the task's validation data.
        strategy: a `keras_lrne.strategies.Strategy`. Defaults to
            `GA(population_size=64, num_parents=8)`.
        generations: number of generations (epochs), a positive integer.
        callbacks: list of `keras.callbacks.Callback`.
        verbose: "auto", 0, 1 or 2, as in `fit()`.
        seed: integer run seed. A run is deterministic for a fixed seed on one
            backend and machine. If None, it is drawn from NumPy's global generator,
            so `keras.utils.set_random_seed(...)` before `evolve()` makes the run
            repeat (as it makes `fit()` repeat); without it each run differs. A run
            resumed by `BackupAndRestore` keeps its checkpoint's seed.
        population_batch_size: members evaluated in one vectorised call. Automatic by
            default, from the device memory and the model's output size.
        batch_size: samples per member per call (must divide the number of samples;
            the largest divisor not above it is used). Automatic by default.
        freeze_normalization: keep normalization layers (LayerNormalization, ...) at
            their initial values, as the paper does. Defaults to True.
        distribution: a `keras_lrne.distribution.PopulationParallel` to split the
            population over the host's devices, a `RayWorkers` to evaluate it in
            Ray actors (one machine or a cluster), or None (default) for one device.
            Results do not depend on it, and a resumed run may use another.

    Returns:
        A `keras.callbacks.History` whose `history` dict holds, per generation,
        `loss` (of the weights the model holds), `mean_loss` and `median_loss` (over
        members with a finite loss), `val_loss` when there is validation data, the
        metrics given to `compile(metrics=...)` as `fit()` names them (`accuracy`,
        `val_accuracy`: of the weights the model holds, on the generation's data and
        the validation data, computed by `model.evaluate()`), the
        strategy's own logs, throughput (`member_evals_per_second`, plus
        `member_tokens_per_second` for token data) and `generation_seconds`, the
        generation's wall time (its sum over a History is the run's compute time,
        across resumes). A `Fitness` logs `fitness`, `mean_fitness` and
        `median_fitness` in place of the mean and median losses; environments log
        returns.

    Example:

    >>> model = keras.Sequential([keras.layers.Dense(16, activation="relu"),
    ...                           keras.layers.Dense(3)])
    >>> model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = keras_lrne.evolve(
    ...     model, x, y,
    ...     strategy=keras_lrne.strategies.GA(population_size=64, num_parents=8),
    ...     generations=20,
    ... )
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Received an invalid value for `model`, expected a `keras.Model` (Sequential, "
            f"functional or subclassed). Received: model={model!r:.200}"
        )
    check_int("generations", generations)
    check_int("population_batch_size", population_batch_size, allow_none=True)
    check_int("batch_size", batch_size, allow_none=True)
    freeze_normalization = check_bool("freeze_normalization", freeze_normalization)
    if strategy is None:
        strategy = GA(population_size=64, num_parents=8)
    if not isinstance(strategy, Strategy):
        raise ValueError(
            "Received an invalid value for `strategy`, expected a `keras_lrne.strategies."
            f"Strategy` such as `GA(...)`. Received: strategy={strategy!r}"
        )
    if verbose == "auto":
        verbose = 1
    if verbose not in (0, 1, 2):
        raise ValueError(
            f"Received an invalid value for `verbose`, expected 'auto', 0, 1 or 2. "
            f"Received: verbose={verbose!r}"
        )
    _check_callbacks(callbacks)
    if distribution is not None and not isinstance(distribution,
                                                   (PopulationParallel, RayWorkers)):
        raise ValueError(
            "Received an invalid value for `distribution`, expected None, a "
            "`keras_lrne.distribution.PopulationParallel` or a `RayWorkers`. "
            f"Received: distribution={distribution!r}"
        )
    if isinstance(x, Task):
        if y is not None:
            raise ValueError(
                f"`y` must be None when `x` is a task. Received: y of type {type(y).__name__}"
            )
        task = x
    elif x is None:
        raise ValueError("Received no data: pass `x` (and `y`) or a task. Received: x=None")
    else:
        task = ArrayTask(x, y)
    if validation_data is not None:
        if not task.supervised:
            kind = "a Python fitness (per_member=True)" if _is_python_fitness(task) \
                else "environment tasks"
            raise ValueError(
                f"`validation_data` is not used with {kind}. "
                f"Received: validation_data of type {type(validation_data).__name__}"
            )
        validation = as_validation(validation_data)
    else:
        validation = task.validation_data()
    if validation is not None and task.supervised:
        _check_validation_shapes(model, task, validation)
    check_int("seed", seed, minimum=0, allow_none=True)
    backup = checkpoint.RunBackup.find(callbacks)
    resume = backup.open() if backup is not None else None
    completed = False
    try:
        history = _evolve(model, task, validation_data, validation, strategy, generations,
                          callbacks, verbose, seed, population_batch_size, batch_size,
                          freeze_normalization, distribution, backup, resume)
        completed = True
        return history
    finally:
        if backup is not None:
            backup.close(completed)


def _check_compiled_metrics(model, task, targets):
    """Metrics given to `compile()` are logged as `fit()` logs them, by `model.evaluate()`
    on data with targets. Without a loss (Keras' `evaluate()` refuses it too) they are
    refused before any work; on a task without `(x, y)` data (an environment, a Python
    fitness, a fitness of the outputs alone) a warning says they are not logged."""
    metrics = compiled_metrics(model)
    if metrics is None:
        return
    if not task.supervised or _is_python_fitness(task):
        kind = ("a Python fitness (per_member=True)" if _is_python_fitness(task)
                else "an environment task")
        reason = f"{kind} has no `(x, y)` data to compute them on"
    elif targets is None:
        reason = "the data has no targets `y` to compare the outputs with"
    elif getattr(model, "loss", None) is None:
        raise ValueError(
            "The metrics given to `compile()` cannot be logged without a loss: Keras' "
            "`evaluate()`, which computes them, needs one. Add `loss=...` to `compile()`, "
            f"or compile without `metrics`. Received: loss=None, metrics={metrics!r}"
        )
    else:
        return
    warnings.warn(
        f"The metrics given to `compile()` are not logged: {reason}. "
        f"Received: metrics={metrics!r}", UserWarning, stacklevel=5)


def _prepare(model, task, strategy, seed, freeze_normalization, validation,
             population_batch_size, batch_size, distribution):
    """Builds the model if needed, checks it against the task, returns the `Run`."""
    if not task.supervised or _is_python_fitness(task):
        _check_compiled_metrics(model, task, None)
    if _is_python_fitness(task):
        if not model.built or not model.trainable_variables:
            raise ValueError(
                "A Python fitness (per_member=True) needs a built model: call it once on "
                "sample inputs, or give it an `Input`, before `evolve()`. Received: model "
                f"{model.name!r} with built={model.built}"
            )
        return Run(model, strategy, seed, freeze_normalization, distribution=distribution)
    if not task.supervised:
        if not model.built or not model.trainable_variables:
            model(np.zeros((1, *task.input_shape), "float32"), training=False)
        _check_output_size(model, task)
        return Run(model, strategy, seed, freeze_normalization, distribution=distribution)
    objective = pop.objective_for(model, task)
    if objective is None and (not getattr(model, "compiled", False)
                              or getattr(model, "loss", None) is None):
        raise ValueError(
            "The model has no loss: call `model.compile(loss=...)` before "
            f"`evolve()`, or evolve on a `keras_lrne.tasks.Fitness`. "
            f"Received: loss={getattr(model, 'loss', None)!r}"
        )
    x0, y0 = task.train_data(0)
    _check_compiled_metrics(model, task, y0)
    _check_input_shape(model, x0, _inputs_argument(task))
    first = keras.tree.map_structure(lambda a: a[:1], x0)
    if not model.built or not model.trainable_variables:
        model(first, training=False)
    if objective is None:
        targets = getattr(task, "targets_argument", "x")
        check_target_shapes(model, first, y0, targets)
        check_sparse_labels(model, first, {targets: y0,
                                           "validation_data": validation and validation[1]})
    return Run(model, strategy, seed, freeze_normalization, pop.num_samples(x0),
               pop.estimate_bytes_per_member_sample(model, x0), validation,
               population_batch_size, batch_size, distribution, objective=objective)


def _evolve(model, task, validation_data, validation, strategy, generations, callbacks,
            verbose, seed, population_batch_size, batch_size, freeze_normalization,
            distribution, backup, resume):
    """The body of `evolve()` once its arguments are checked and the backup is open."""
    if not hasattr(model, "optimizer"):
        # Environment tasks need no compile(); Keras callbacks (BackupAndRestore,
        # ModelCheckpoint) read `model.optimizer`, which only compile() creates.
        model.optimizer = None
    if seed is None:
        # A resumed run keeps its checkpoint's seed; otherwise the seed comes from the
        # global NumPy generator, which `keras.utils.set_random_seed` seeds (as it seeds
        # Keras' own initializers): a seeded program repeats, an unseeded one differs.
        seed = (resume[1]["settings"]["seed"] if resume else
                int(np.random.randint(0, 2**31 - 1)))
    run = _prepare(model, task, strategy, seed, freeze_normalization, validation,
                   population_batch_size, batch_size, distribution)
    devices = distribution if isinstance(distribution, PopulationParallel) else None
    start = None
    if strategy.starts_from_weights:
        # The mean starts at the model's weights; a resumed run at those its checkpoint
        # kept (the model now holds later ones), so that its lineage, rebuilt members
        # and Ray workers are the interrupted run's.
        start = checkpoint.saved_start(resume) if resume else [
            keras.ops.convert_to_numpy(model.trainable_variables[s.index])
            for s in run.evolvable]
    state = strategy.init(run.evolvable, seed, distribution=devices, start=start)
    lineage = run.lineage = Lineage(seed, strategy.population_size, {
        "strategy": strategy.__class__.__name__, "config": strategy.get_config(),
        "freeze_normalization": freeze_normalization,
        "evolvable_shapes": [list(s.shape) for s in run.evolvable]}, start=start)
    evaluator = run.evaluator = make_evaluator(run, task)
    model._evolution_run, model._evolution_state, model.lineage = run, state, lineage
    # The run's signature is only needed for a backup (and Keras' config serialisation
    # imports TensorFlow when it is installed, which a JAX run does not need).
    settings = None if backup is None else _run_settings(
        seed, strategy, run, task, model, validation_data, validation, freeze_normalization)
    if settings is not None:  # recorded; a resume may change it
        settings["distribution"] = None if distribution is None else distribution.get_config()
    start, history, stopped = 0, {}, False
    if resume:
        state, history, stopped = backup.restore(resume, settings, state, lineage, task)
        start = state.generation
        model._evolution_state = state
    try:
        return _run_generations(model, task, run, state, settings, history, start, stopped,
                                generations, callbacks, verbose, backup)
    finally:
        evaluator.close()


def _run_generations(model, task, run, state, settings, history, start, stopped,
                     generations, callbacks, verbose, backup):
    """The loop: callbacks around `run.step()`, the backup after every generation."""
    evaluator, strategy, lineage = run.evaluator, run.strategy, run.lineage
    # The BackupAndRestore callback is handled here (see `checkpoint.RunBackup`).
    others = [c for c in callbacks or [] if backup is None or c is not backup.callback]
    appending = (backup.resume_csv_loggers(others, history, start)
                 if backup is not None and (start or history) else [])
    saved_append = [logger.append for logger in appending]
    for logger in appending:
        logger.append = True
    callback_list = keras.callbacks.CallbackList(
        others, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=generations, steps=evaluator.steps,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    for logger, append in zip(appending, saved_append):
        logger.append = append
    if start:
        # After the callbacks' on_train_begin: the model holds the weights of the
        # last completed generation.
        assign(model, run.evolvable, strategy.best(state))
        for callback in callback_list.callbacks:
            if isinstance(callback, keras.callbacks.History):
                callback.epoch = list(range(start))
                callback.history = {k: list(v) for k, v in history.items()}
    logs = {}
    # A run that a callback stopped (e.g. EarlyStopping) stays stopped on resume.
    for generation in range(start, start if stopped else generations):
        callback_list.on_epoch_begin(generation)
        generation_start = time.perf_counter()
        progress = Progress(callback_list, evaluator.steps)
        state, logs = run.step(state, generation, progress)
        model._evolution_state = state
        logs["generation_seconds"] = time.perf_counter() - generation_start
        for key, value in logs.items():  # as the callbacks see them (Python floats)
            history.setdefault(key, []).append(checkpoint.logged_value(value))
        if backup is not None:
            backup.save(state, lineage, history, task, settings, generation)
        progress.advance_to(evaluator.steps, logs)
        _set_csv_columns(others, logs)
        callback_list.on_epoch_end(generation, logs)
        if model.stop_training:
            break
    if backup is not None and not stopped:
        backup.finish(state, lineage, history, task, settings,
                      stopped=bool(model.stop_training))
    callback_list.on_train_end(logs)
    for callback in callback_list.callbacks:
        if isinstance(callback, keras.callbacks.History):
            return callback
    return model.history


# -- checks --------------------------------------------------------------------------
def _named_inputs(model):
    """`[(name, sample shape)]` of a functional model's inputs, or None."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return [(getattr(t, "name", None), tuple(t.shape[1:])) for t in inputs]


def _shape_mismatch(expected, received):
    return len(expected) != len(received) or any(
        e is not None and e != r for e, r in zip(expected, received))


def _paired_inputs(model, x, argument):
    """`[(argument name, declared sample shape, received sample shape)]` for the inputs
    of `x` that can be matched to the model's declared inputs."""
    inputs = _named_inputs(model)
    if inputs is None:
        return []
    if isinstance(x, dict):
        by_name = dict(inputs)
        return [(f"{argument}[{key!r}]", by_name[key], tuple(np.shape(value)[1:]))
                for key, value in x.items() if key in by_name]
    if is_structure(x):
        if len(x) != len(inputs):
            return []
        return [(f"{argument}[{i}]", shape, tuple(np.shape(value)[1:]))
                for i, ((_, shape), value) in enumerate(zip(inputs, x))]
    if len(inputs) != 1:
        return []
    return [(argument, inputs[0][1], tuple(np.shape(x)[1:]))]


def _inputs_argument(task):
    """How messages call the training inputs: `x`, or a `Fitness`'s `data`."""
    if _is_fitness(task):
        return "data[0]" if getattr(task, "has_targets", False) else "data"
    return "x"


def _input_keys(model, names):
    """For each input (named in `names`), the dict keys that feed it: its name, and its key
    in the dict the functional model was built on, when it was."""
    keys = [{name} for name in names]
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, dict):
        for key, tensor in structure.items():
            for accepted, name in zip(keys, names):
                if getattr(tensor, "name", None) == name:
                    accepted.add(key)
    return keys


def _check_input_structure(model, x, argument):
    """Fails when `x` holds more or fewer arrays than the model has inputs (Keras would
    drop extra arrays with only a warning), or dict keys that are not inputs."""
    inputs = _named_inputs(model)
    if inputs is None or not is_structure(x):
        return
    names = [name for name, _ in inputs]
    # Sequential models' inputs have generated names (`keras_tensor_3`): shapes only.
    described = ", ".join(
        f"sample shape {shape}" if not name or name.startswith("keras_tensor")
        else f"{name!r} of sample shape {shape}" for name, shape in inputs)
    count = f"{len(inputs)} input{'s' if len(inputs) != 1 else ''} ({described})"
    if isinstance(x, dict):
        keys = _input_keys(model, names)
        unknown = [key for key in x if not any(key in accepted for accepted in keys)]
        missing = [name for name, accepted in zip(names, keys) if not accepted & set(x)]
        if unknown or missing:
            problem = (f"keys that are not inputs of the model: {unknown} (they would be "
                       "dropped)" if unknown else f"no arrays for the inputs {missing}")
            raise ValueError(
                f"`{argument}` has {problem}. The model has {count}: pass a dict with one "
                f"array per input, keyed by input name. Received: {argument} with keys "
                f"{list(x)}"
            )
        return
    if len(x) == len(inputs):
        return
    hint = ""
    if argument == "data" and len(x) == 2:
        hint = (" To pass inputs and targets, use a tuple: `data=(x, y)`; a list or dict "
                "holds the model's inputs.")
    elif argument == "x" and len(inputs) == 1:
        hint = " Targets go in `y`."
    extra = " (the extra ones would be dropped)" if len(x) > len(inputs) else ""
    shapes = [tuple(np.shape(v)) for v in x]
    raise ValueError(
        f"The model has {count}, but `{argument}` holds {len(x)} arrays{extra}: pass one "
        f"array per input, in input order, or a dict keyed by input name.{hint} "
        f"Received: {argument} of {len(x)} arrays with shapes {shapes}"
    )


def _check_input_shape(model, x, argument="x"):
    """Fails early when samples do not fit the model's declared inputs: their number
    (or dict keys) and shapes."""
    inputs = _named_inputs(model)
    if inputs is not None and len(inputs) > 1 and not is_structure(x):
        names = [name for name, _ in inputs]
        raise ValueError(
            f"The model has {len(inputs)} inputs ({names}) but received one array for "
            f"`{argument}`: pass a dict keyed by input name or a list in input order. "
            f"Received: {argument} with shape {np.shape(x)}"
        )
    _check_input_structure(model, x, argument)
    for name, expected, received in _paired_inputs(model, x, argument):
        if _shape_mismatch(expected, received):
            where = "" if name == argument else f" ({name})"
            raise ValueError(
                f"The samples do not match the model's input shape{where}: each sample must "
                f"have shape {expected} (e.g. sequences of the model's context length). "
                f"Received: {name} with sample shape {received}"
            )


def _check_validation_shapes(model, task, validation):
    """Fails before the run when validation samples or targets are shaped unlike the
    model's inputs (or the training samples) and the training targets; otherwise they
    would fail only after the first generation."""
    x0, y0 = task.train_data(0)
    # A training mismatch is reported as such, first.
    _check_input_shape(model, x0, _inputs_argument(task))
    _check_input_structure(model, validation[0], "validation_data")
    paired = _paired_inputs(model, validation[0], "validation_data")
    if paired:
        checks = [(name, expected, received, "the model's input shape")
                  for name, expected, received in paired]
    else:
        train = leaves(x0, "x")
        val = leaves(validation[0], "validation_data")
        checks = [(vname, tuple(np.shape(t)[1:]), tuple(np.shape(v)[1:]),
                   "the training samples' shape")
                  for (_, t), (vname, v) in zip(train, val)]
    for name, expected, received, what in checks:
        if _shape_mismatch(expected, received):
            where = "`validation_data`" if name == "validation_data" else f"`{name}`"
            raise ValueError(
                f"The samples of {where} do not match {what}: each sample must "
                f"have shape {expected}. Received: {name} with sample shape "
                f"{received}"
            )
    if y0 is None or validation[1] is None:
        return
    if not _is_fitness(task) and model.built:  # wrong training targets, first
        first = keras.tree.map_structure(lambda a: a[:1], x0)
        check_target_shapes(model, first, y0, getattr(task, "targets_argument", "x"))
    for (_, train), (name, val) in zip(leaves(y0, "y"), leaves(validation[1], "validation_data")):
        expected, received = tuple(np.shape(train)[1:]), tuple(np.shape(val)[1:])
        if _trailing_ones_removed(expected) != _trailing_ones_removed(received):
            raise ValueError(
                "The targets of `validation_data` do not match the training targets: each "
                f"target must have shape {expected}, as in training. Received: "
                f"{name} with target shape {received}"
            )


def _check_output_size(model, task):
    out = model(np.zeros((1, *task.input_shape), "float32"), training=False)
    size = int(np.prod(keras.ops.shape(out)[1:]))
    if size != task.num_outputs:
        raise ValueError(
            f"The model has {size} outputs but the task's action space "
            f"{task.action_space} needs {task.num_outputs}. Received: model output "
            f"shape {tuple(keras.ops.shape(out))}"
        )


