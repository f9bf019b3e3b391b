"""`EvolveMixin`: adds `evolve()` to any Keras model."""

import contextlib
import json
import time

import keras
import numpy as np

from keras_lrne import checkpoint, genome
from keras_lrne import population as pop
from keras_lrne._validation import check_bool, check_int
from keras_lrne.distribution import PopulationParallel, RayWorkers
from keras_lrne.evaluators import Progress, plan_groups
from keras_lrne.lineage import Lineage
from keras_lrne.strategies import GA, Strategy
from keras_lrne.tasks.base import ArrayTask, Task, as_arrays, check_sparse_labels


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


_SINGLE_IO = ("evolve() supports models with a single input and a single output, trained on "
              "one input array and one target array.")


def _several_arrays(value):
    """Describes `value` when it holds several arrays (a dict, or a list/tuple of arrays,
    as Keras takes for several inputs or outputs), else returns None."""
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, dict) or len(getattr(v, "shape", ())) >= 1 for v in value
    ):
        shapes = [tuple(v.shape) if hasattr(v, "shape") else "dict" for v in value]
        return f"a {type(value).__name__} of {len(value)} arrays with shapes {shapes}"
    if hasattr(value, "element_spec"):  # a tf.data.Dataset of (x, y) batches
        spec = value.element_spec
        if isinstance(spec, tuple):
            for name, part in zip(("inputs", "targets"), spec):
                if isinstance(part, (dict, list, tuple)):
                    keys = sorted(map(str, part)) if isinstance(part, dict) else len(part)
                    kind = "a dict with keys" if isinstance(part, dict) else "a tuple of"
                    return f"a dataset whose {name} are {kind} {keys}"
    return None


def _trailing_ones_removed(shape):
    shape = tuple(shape)
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


class Run:
    """What one `evolve()` call builds once, for its evaluator and for inspection
    (`model.evolution_run`).

    Attributes:
        model: the model.
        strategy: the strategy.
        seed: the run seed.
        specs: `VariableSpec`s of every trainable variable; `evolvable`: those evolved.
        functions: the compiled population `evaluate` (`PopulationFunctions`).
        distribution: the `PopulationParallel` (None: one device).
        members_per_device: members each device evaluates (the population size on one).
        chunk_size, batch_size: members per vectorised call, samples per call.
        group_size, groups: members per device and progress step, and the steps'
            `(start, skip)` within each device's share.
        bytes_per_sample: the planner's memory estimate per member and sample.
        validation: `(x_val, y_val)` or None.
        evaluator: the task's evaluator (set once built).
    """

    def __init__(self, model, strategy, seed, freeze_normalization, num_samples=1,
                 bytes_per_sample=1, validation=None, population_batch_size=None,
                 batch_size=None, distribution=None):
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
        members = strategy.num_members
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
        )
        self.bytes_per_sample = bytes_per_sample
        self.validation = validation
        self.evaluator = None


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
        "validation_data": (None if validation_data is None or validation is None
                            else checkpoint.streaming_digest(*validation)),
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


class EvolveMixin:
    """Adds `evolve()`, the gradient-free counterpart of `fit()`, to a Keras model.

    Mix it in before the Keras base class (`class MyModel(EvolveMixin, keras.Model)`);
    `keras_lrne.Model` and `keras_lrne.Sequential` already do.
    """

    def compile(self, optimizer=None, *args, **kwargs):
        """`keras.Model.compile`, but the optimizer defaults to None instead of RMSprop.

        `evolve()` needs only the loss (and metrics); an optimizer nobody asked for would
        be saved unbuilt in `.keras` files and make loading them warn. Pass one to also
        train with `fit()`.
        """
        return super().compile(optimizer, *args, **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded model as it was saved (see `keras.Model.compile_from_config`);
        a model saved without an optimizer is loaded without one."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # as Keras does

    def evolve(self, x=None, y=None, validation_data=None, strategy=None, generations=1,
               callbacks=None, verbose="auto", seed=None, population_batch_size=None,
               batch_size=None, freeze_normalization=True, distribution=None):
        """Trains the model by neuroevolution, like `fit()` trains it by gradients.

        Each generation (one "epoch" for callbacks) asks the strategy for a population,
        evaluates every member with the task's evaluator (for data: the loss given to
        `compile()`, in compiled, vectorised calls) and tells the strategy the losses.
        Before every `on_epoch_end` the model's variables hold the strategy's best
        weights (`strategy.best(state)`: the GA's elite, OpenES's mean), and they still
        do after `evolve()`. Within a generation the progress bar and batch-level
        callbacks advance per step, as `fit()` reports batches: a step is a group of
        population chunks (data; at most 16 per generation) or a finished member-episode
        (environments). Callbacks with a batch frequency (`ModelCheckpoint(save_freq=N)`,
        `TensorBoard(update_freq=N)`) count these steps; use their per-epoch setting to act
        once per generation.

        Args:
            x: input data (numpy array or tensor, with `y`), a finite `tf.data.Dataset`
                of `(x, y)` batches, or a `keras_lrne.tasks` task such as
                `LanguageModeling`.
            y: targets for array input; None otherwise.
            validation_data: `(x_val, y_val)` or a dataset of them; the loss of the
                model's weights on it is logged as `val_loss`. Defaults to the task's
                validation data.
            strategy: a `keras_lrne.strategies.Strategy`. Defaults to
                `GA(population_size=64, num_parents=8)`.
            generations: number of generations (epochs), a positive integer.
            callbacks: list of `keras.callbacks.Callback`.
            verbose: "auto", 0, 1 or 2, as in `fit()`.
            seed: integer run seed (random if None). A run is deterministic for a
                fixed seed on one backend and machine.
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
            strategy's own logs, throughput (`member_evals_per_second`, plus
            `member_tokens_per_second` for token data) and `generation_seconds`, the
            generation's wall time (its sum over a History is the run's compute time,
            across resumes).

        Example:

        >>> model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> history = model.evolve(
        ...     keras_lrne.tasks.LanguageModeling(),
        ...     strategy=keras_lrne.strategies.GA(population_size=64, num_parents=8),
        ...     generations=20,
        ... )
        """
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
        self._check_single_input_output(x, y, validation_data)
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
                raise ValueError(
                    "`validation_data` is not used with environment tasks. "
                    f"Received: validation_data of type {type(validation_data).__name__}"
                )
            if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
                validation = as_arrays(validation_data[0], validation_data[1], "validation_data")
            else:
                validation = as_arrays(validation_data, None, "validation_data")
        else:
            validation = task.validation_data()
        if validation is not None and task.supervised:
            self._check_validation_shapes(task, validation)
        check_int("seed", seed, minimum=0, allow_none=True)
        backup = checkpoint.RunBackup.find(callbacks)
        resume = backup.open() if backup is not None else None
        completed = False
        scope = (distribution.scope() if isinstance(distribution, PopulationParallel)
                 else contextlib.nullcontext())
        try:
            with scope:
                history = self._evolve(task, validation_data, validation, strategy,
                                       generations, callbacks, verbose, seed,
                                       population_batch_size, batch_size,
                                       freeze_normalization, distribution, backup, resume)
            completed = True
            return history
        finally:
            if backup is not None:
                backup.close(completed)

    @property
    def evolution_state(self):
        """The strategy state of the last (or running) `evolve()` call, or None.

        A NamedTuple of the strategy (`GAState`, `OpenESState`, ...): e.g. `losses` (the
        last generation's, NaN/inf as +inf), `best_loss`, `generation`, and the
        strategy's own arrays (the GA's `population`, OpenES's `mean`).
        """
        return getattr(self, "_evolution_state", None)

    @property
    def evolution_run(self):
        """What the last `evolve()` call built (a `Run`: strategy, seed, variable specs,
        compiled functions, chunk plan, evaluator), or None."""
        return getattr(self, "_evolution_run", None)

    def _prepare(self, task, strategy, seed, freeze_normalization, validation,
                 population_batch_size, batch_size, distribution):
        """Builds the model if needed, checks it against the task, returns the `Run`."""
        if not task.supervised:
            if not self.built or not self.trainable_variables:
                self(np.zeros((1, *task.input_shape), "float32"), training=False)
            self._check_output_size(task)
            return Run(self, strategy, seed, freeze_normalization, distribution=distribution)
        if not getattr(self, "compiled", False) or getattr(self, "loss", None) is None:
            raise ValueError(
                "The model has no loss: call `model.compile(loss=...)` before "
                f"`evolve()`. Received: loss={getattr(self, 'loss', None)!r}"
            )
        x0, y0 = task.train_data(0)
        self._check_input_shape(x0)
        if not self.built or not self.trainable_variables:
            self(x0[:1], training=False)
        check_sparse_labels(self, x0[:1], {getattr(task, "targets_argument", "x"): y0,
                                           "validation_data": validation and validation[1]})
        return Run(self, strategy, seed, freeze_normalization, len(x0),
                   pop.estimate_bytes_per_member_sample(self, x0), validation,
                   population_batch_size, batch_size, distribution)

    def _evolve(self, task, validation_data, validation, strategy, generations, callbacks,
                verbose, seed, population_batch_size, batch_size, freeze_normalization,
                distribution, backup, resume):
        """The body of `evolve()` once its arguments are checked and the backup is open."""
        if not hasattr(self, "optimizer"):
            # Environment tasks need no compile(); Keras callbacks (BackupAndRestore,
            # ModelCheckpoint) read `model.optimizer`, which only compile() creates.
            self.optimizer = None
        if seed is None:
            seed = (resume[1]["settings"]["seed"] if resume else
                    int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF))
        run = self._prepare(task, strategy, seed, freeze_normalization, validation,
                            population_batch_size, batch_size, distribution)
        state = strategy.init(run.evolvable, seed)
        lineage = run.lineage = Lineage(seed, strategy.population_size, {
            "strategy": strategy.__class__.__name__, "config": strategy.get_config(),
            "freeze_normalization": freeze_normalization,
            "evolvable_shapes": [list(s.shape) for s in run.evolvable]})
        evaluator = run.evaluator = (distribution.evaluator(run, task)
                                     if isinstance(distribution, RayWorkers)
                                     else task.evaluator(run))
        self._evolution_run, self._evolution_state, self.lineage = run, state, lineage
        # The run's signature is only needed for a backup (and Keras' config serialisation
        # imports TensorFlow when it is installed, which a JAX run does not need).
        settings = None if backup is None else _run_settings(
            seed, strategy, run, task, self, validation_data, validation, freeze_normalization)
        if settings is not None:  # recorded; a resume may change it
            settings["distribution"] = None if distribution is None else distribution.get_config()
        start, history, stopped = 0, {}, False
        if resume:
            state, history, stopped = checkpoint.restore_run(resume, backup.path, settings,
                                                             state, lineage, task)
            start = state.generation
            self._evolution_state = state
        try:
            history_callback = self._run_generations(
                task, strategy, run, evaluator, state, lineage, settings, history, start,
                stopped, generations, callbacks, verbose, backup)
        finally:
            evaluator.close()
        return history_callback

    def _run_generations(self, task, strategy, run, evaluator, state, lineage, settings,
                         history, start, stopped, generations, callbacks, verbose, backup):
        # The BackupAndRestore callback is handled here (see `checkpoint.RunBackup`).
        others = [c for c in callbacks or [] if backup is None or c is not backup.callback]
        appending = (checkpoint.rewrite_csv_loggers(others, history, start)
                     if start or history else [])
        saved_append = [logger.append for logger in appending]
        for logger in appending:
            logger.append = True
        callback_list = keras.callbacks.CallbackList(
            others, add_history=True, add_progbar=verbose != 0, model=self,
            verbose=verbose, epochs=generations, steps=evaluator.steps,
        )
        self.stop_training = False
        callback_list.on_train_begin()
        for logger, append in zip(appending, saved_append):
            logger.append = append
        if start:
            # After the callbacks' on_train_begin: the model holds the weights of the
            # last completed generation.
            self._assign(strategy.best(state))
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
            population, state = strategy.ask(state)
            losses, logs = evaluator.evaluate(population, generation, progress)
            state, strategy_logs = strategy.tell(state, losses)
            logs.update(strategy_logs)
            evaluator.complete(logs)
            lineage.record(**strategy.record(state))
            weights = strategy.best(state)
            self._assign(weights)
            self._evolution_state = state
            logs.update(evaluator.validate(weights))
            logs["generation_seconds"] = time.perf_counter() - generation_start
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            if backup is not None:
                backup.save(state, lineage, history, task, settings, generation)
            progress.advance_to(evaluator.steps, logs)
            _set_csv_columns(others, logs)
            callback_list.on_epoch_end(generation, logs)
            if self.stop_training:
                break
        if backup is not None and not stopped:
            backup.finish(state, lineage, history, task, settings,
                          stopped=bool(self.stop_training))
        callback_list.on_train_end(logs)
        for callback in callback_list.callbacks:
            if isinstance(callback, keras.callbacks.History):
                return callback
        return self.history

    # -- helpers ----------------------------------------------------------------------
    def _check_input_shape(self, x):
        """Fails early when samples do not fit the model's declared input shape."""
        try:
            inputs = self.inputs
        except (AttributeError, ValueError):
            return
        if not inputs or len(inputs) != 1:
            return
        expected = tuple(inputs[0].shape[1:])
        received = tuple(np.shape(x)[1:])
        if len(expected) != len(received) or any(
            e is not None and e != r for e, r in zip(expected, received)
        ):
            raise ValueError(
                "The samples do not match the model's input shape: each sample must have "
                f"shape {expected} (e.g. sequences of the model's context length). "
                f"Received: x with sample shape {received}"
            )

    def _check_single_input_output(self, x, y, validation_data):
        """Fails before any work for models or data with several inputs or outputs."""
        for kind in ("input", "output"):
            try:
                structure = getattr(self, kind)  # a functional model's nested inputs/outputs
            except (AttributeError, ValueError):
                structure = None
            try:
                flat = getattr(self, kind + "s")
            except (AttributeError, ValueError):
                flat = None
            if isinstance(structure, dict):
                received = f"a model whose {kind}s are a dict with keys {sorted(structure)}"
            elif flat is not None and len(flat) != 1:
                shapes = [tuple(t.shape) for t in flat]
                received = f"a model with {len(flat)} {kind}s, of shapes {shapes}"
            else:
                continue
            raise ValueError(f"{_SINGLE_IO} Received: {received}")
        pairs = [] if isinstance(x, Task) else [("x", x), ("y", y)]
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            pairs += [("validation_data[0]", validation_data[0]),
                      ("validation_data[1]", validation_data[1])]
        else:
            pairs.append(("validation_data", validation_data))
        for name, value in pairs:
            described = _several_arrays(value)
            if described is not None:
                raise ValueError(f"{_SINGLE_IO} Received: {name} as {described}")

    def _check_validation_shapes(self, task, validation):
        """Fails before the run when validation samples or targets are shaped unlike the
        model's input (or, without a declared input, the training samples) and the
        training targets; otherwise they would fail only after the first generation."""
        x0, y0 = task.train_data(0)
        self._check_input_shape(x0)  # a training mismatch is reported as such, first
        try:
            inputs = self.inputs
        except (AttributeError, ValueError):
            inputs = None
        if inputs and len(inputs) == 1:
            expected, what = tuple(inputs[0].shape[1:]), "the model's input shape"
        else:
            expected, what = tuple(np.shape(x0)[1:]), "the training samples' shape"
        received = tuple(np.shape(validation[0])[1:])
        if len(expected) != len(received) or any(
            e is not None and e != r for e, r in zip(expected, received)
        ):
            raise ValueError(
                f"The samples of `validation_data` do not match {what}: each sample must "
                f"have shape {expected}. Received: validation_data with sample shape "
                f"{received}"
            )
        expected = tuple(np.shape(y0)[1:])
        received = tuple(np.shape(validation[1])[1:])
        if _trailing_ones_removed(expected) != _trailing_ones_removed(received):
            raise ValueError(
                "The targets of `validation_data` do not match the training targets: each "
                f"target must have shape {expected}, as in training. Received: "
                f"validation_data with target shape {received}"
            )

    def _check_output_size(self, task):
        out = self(np.zeros((1, *task.input_shape), "float32"), training=False)
        size = int(np.prod(keras.ops.shape(out)[1:]))
        if size != task.num_outputs:
            raise ValueError(
                f"The model has {size} outputs but the task's action space "
                f"{task.action_space} needs {task.num_outputs}. Received: model output "
                f"shape {tuple(keras.ops.shape(out))}"
            )

    def _assign(self, weights):
        """Loads `weights` (one tensor per evolvable variable) into the model."""
        variables = self.trainable_variables
        for spec, values in zip(self._evolution_run.evolvable, weights):
            variables[spec.index].assign(values)

    def rebuild_member(self, generation, member, assign=False):
        """Rebuilds one member of the last `evolve()` run from the run seed and its lineage.

        Args:
            generation: population index (0 = initial population; population `g + 1` is the
                one made after evaluating generation `g`).
            member: member index within that population (for `OpenES`, None rebuilds
                the mean).
            assign: also load the member into the model's variables.

        Returns:
            A list of numpy arrays, one per evolvable trainable variable, in
            `model.trainable_variables` order.
        """
        run = self.evolution_run
        if run is None:
            raise ValueError("`rebuild_member()` needs a model that has been evolved.")
        self.lineage._check_index(generation, member)
        records = {k: np.asarray(v) for k, v in self.lineage.records.items()}
        arrays = run.strategy.rebuild(run.evolvable, run.seed, records, generation, member)
        if assign:
            self._assign(arrays)
        return arrays
