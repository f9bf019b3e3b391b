"""`EvolveMixin`: adds `evolve()` to any Keras model."""

import json
import numbers
import os
import shutil
import time

import keras
import numpy as np

from keras_lrne import backend as lrne_backend
from keras_lrne import checkpoint
from keras_lrne import population as pop
from keras_lrne._validation import check_int
from keras_lrne.lineage import Lineage
from keras_lrne.rollout import RolloutEvaluator
from keras_lrne.strategies import GA, Strategy
from keras_lrne.tasks.base import ArrayTask, Task, as_arrays, check_sparse_labels
from keras_lrne.tasks.environment import Environment


def _check_generations(generations):
    if (
        isinstance(generations, bool)
        or not isinstance(generations, numbers.Integral)
        or generations < 1
    ):
        raise ValueError(
            "Received an invalid value for `generations`, expected an integer >= 1. "
            f"Received: generations={generations!r}"
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


class _Run:
    """Everything one `evolve()` call builds once: specs, compiled functions, data layout."""

    def __init__(self, model, strategy, seed, bytes_per_sample, num_samples,
                 population_batch_size, batch_size):
        self.specs = pop.collect_variable_specs(
            model, freeze_normalization=strategy.config.freeze_normalization
        )
        self.evolvable = [s for s in self.specs if s.evolvable]
        if not self.evolvable:
            raise ValueError(
                "The model has nothing to evolve: it has no trainable variables outside "
                "frozen normalization layers. Received: model with "
                f"{len(model.trainable_variables)} trainable variables"
            )
        self.chunk_size, self.batch_size = pop.plan_chunks(
            strategy.population_size, num_samples, bytes_per_sample,
            population_batch_size=population_batch_size, batch_size=batch_size,
        )
        self.functions = pop.PopulationFunctions(
            model, self.specs, getattr(model, "loss", None), strategy.noise_stds(self.specs),
            self.chunk_size,
        )
        self.seed = int(seed)
        self.bytes_per_sample = bytes_per_sample


def _finite_stats(values):
    finite = values[np.isfinite(values)]
    if not finite.size:
        return float("nan"), float("nan"), float("nan")
    return float(np.mean(finite)), float(np.median(finite)), float(np.max(finite))


class _SupervisedEvaluator:
    """Per-generation losses of a population on `(x, y)` data, plus the elite's val_loss."""

    def __init__(self, run, task, validation):
        self.run, self.task = run, task
        self.functions = run.functions
        self.tokens_per_sample = getattr(task, "tokens_per_sample", None) or getattr(
            task, "sequence_length", None
        )
        self.val = None
        if validation is not None:
            _, val_batch = pop.plan_chunks(1, len(validation[0]), run.bytes_per_sample,
                                           population_batch_size=1)
            self.val = (pop.batch_data(validation[0], val_batch),
                        pop.batch_data(validation[1], val_batch))
        self._cached = (None, None, None)

    def evaluate(self, population, generation):
        x, y = self.task.train_data(generation)
        if self._cached[0] is not x:
            self._cached = (x,
                            keras.ops.convert_to_tensor(pop.batch_data(x, self.run.batch_size)),
                            keras.ops.convert_to_tensor(pop.batch_data(y, self.run.batch_size)))
        functions = self.functions
        bk = lrne_backend.get()
        bk.block(population)  # mutation may still run asynchronously: not evaluation time
        start = time.perf_counter()
        losses = bk.to_numpy(functions.evaluate(
            population, functions.frozen_values(), functions.non_trainable_values(),
            self._cached[1], self._cached[2],
        ))
        seconds = max(time.perf_counter() - start, 1e-9)
        clean = np.where(np.isfinite(losses), losses, np.inf)
        mean, median, _ = _finite_stats(losses)
        logs = {
            "loss": float(np.min(clean)),
            "mean_loss": mean,
            "median_loss": median,
            "member_evals_per_second": len(losses) / seconds,
        }
        if self.tokens_per_sample:
            logs["member_tokens_per_second"] = (
                len(losses) * len(x) * self.tokens_per_sample / seconds
            )
        return losses, logs

    def reevaluate(self, population, members, generation, episodes):
        return None  # the data are fixed: a second evaluation would give the same losses

    def validate(self, population):
        if self.val is None:
            return {}
        functions = self.functions
        elite = [keras.ops.expand_dims(v[0], 0) for v in population]
        loss = functions.evaluate(elite, functions.frozen_values(),
                                  functions.non_trainable_values(), self.val[0], self.val[1])
        return {"val_loss": float(lrne_backend.get().to_numpy(loss)[0])}

    def close(self):
        pass


class _EnvironmentEvaluator:
    """Per-generation losses (-mean return) of a population on an environment task."""

    def __init__(self, model, run, task, strategy, seed):
        self.rollout = RolloutEvaluator(model, run.functions, task, strategy.population_size,
                                        seed)
        self.returns = None

    def evaluate(self, population, generation):
        start = time.perf_counter()
        losses, returns, extra = self.rollout.evaluate(population, generation)
        seconds = max(time.perf_counter() - start, 1e-9)
        self.returns = returns
        clean = np.where(np.isfinite(losses), losses, np.inf)
        mean, median, best = _finite_stats(np.where(np.isfinite(losses), returns, np.nan))
        elite = int(np.argmin(clean))
        logs = {
            "loss": float(clean[elite]),
            "episode_return": float(returns[elite]),
            "mean_return": mean,
            "median_return": median,
            "max_return": best,
            "member_evals_per_second": len(losses) / seconds,
            **extra,
        }
        return losses, logs

    def reevaluate(self, population, members, generation, episodes):
        losses, _, extra = self.rollout.evaluate(
            population, generation, members=members, episodes=episodes, stage=1
        )
        return losses, extra

    def validate(self, population):
        return {}

    def close(self):
        self.rollout.close()


class _Backup:
    """What `evolve()` does for a `keras.callbacks.BackupAndRestore` callback.

    keras-lrne's atomic checkpoint (`checkpoint.STATE_FILE` in the callback's
    `backup_dir`) is the run's only backup: `evolve()` handles the callback itself, so
    Keras' in-place `latest.weights.h5` / `training_metadata.json` writes (which a crash
    can tear, and whose h5 saves grow memory over long runs) are never made, and such
    files left in the directory are never read. The callback's `save_freq` ("epoch" or
    every N generations) and `delete_checkpoint` are honoured. The directory is locked
    for the run (`checkpoint.BackupLock`).
    """

    def __init__(self, callback):
        self.callback = callback
        self.directory = os.fspath(callback.backup_dir)
        self.path = os.path.join(self.directory, checkpoint.STATE_FILE)
        freq = callback.save_freq
        # One generation is one batch of `fit()`: an integer save_freq counts generations.
        self.every = 1 if freq == "epoch" else (int(freq) if freq else 0)
        self.lock = checkpoint.BackupLock(self.directory)
        self.saved = None  # the generation count of the last checkpoint written

    @classmethod
    def find(cls, callbacks):
        callback = next((c for c in callbacks or []
                         if isinstance(c, keras.callbacks.BackupAndRestore)), None)
        return None if callback is None else cls(callback)

    def open(self):
        """Checks the directory, locks it, and returns the checkpoint (or None).

        Fails before any work when the directory is not writable, is in use by another
        process, or holds a damaged checkpoint.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
            probe = os.path.join(self.directory, f".lrne_write_test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as error:
            raise ValueError(
                "The `BackupAndRestore` directory is not writable, so the run could not be "
                f"resumed after a failure. Received: backup_dir={self.directory!r} ({error})"
            ) from error
        self.lock.acquire()
        try:
            return checkpoint.load(self.path) if os.path.lexists(self.path) else None
        except BaseException:
            self.lock.release()
            raise

    def save(self, state, lineage, records, task, settings, generation):
        """Saves after `generation` when `save_freq` says so."""
        if self.every and (generation + 1) % self.every == 0:
            _save_backup(self.path, state, lineage, records, task, settings)
            self.saved = state.generation

    def finish(self, state, lineage, records, task, settings, stopped):
        """Saves the end of a run: all of it, and whether a callback stopped it early
        (a resumed stopped run runs no more generations)."""
        if stopped or self.saved != state.generation:
            _save_backup(self.path, state, lineage, records, task, settings, stopped)

    def close(self, completed):
        """Releases the lock; after a completed run, deletes the backup if asked to."""
        try:
            if completed and self.callback.delete_checkpoint:
                shutil.rmtree(self.directory, ignore_errors=True)
        finally:
            self.lock.release()


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


def _run_settings(seed, strategy, run, task, model, validation_data, validation):
    """The run's signature: a resume must match it exactly (mismatches are named)."""
    settings = {
        "seed": int(seed),
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


def _save_backup(path, state, lineage, records, task, settings, stopped=False):
    bk = lrne_backend.get()
    arrays = {f"population_{i}": bk.to_numpy(v) for i, v in enumerate(state.population)}
    arrays.update(
        losses=np.asarray(state.losses, np.float64),
        parents=state.parents,
        seeds=state.seeds,
        lineage_parents=np.asarray(lineage.parents, np.int32).reshape(-1, lineage.population_size),
        lineage_seeds=np.asarray(lineage.seeds, np.int32).reshape(-1, lineage.population_size),
    )
    meta = {
        "settings": settings,
        "generation": int(state.generation),
        "best_loss": float(state.best_loss),
        "history": records,
        "task_state": task.get_state() if hasattr(task, "get_state") else None,
        "stopped": bool(stopped),
    }
    checkpoint.save(path, arrays, json.loads(json.dumps(meta, default=float)))


def _restore(resume, path, settings, state, lineage, task):
    arrays, meta = resume
    checkpoint.check_settings(meta["settings"], settings, path)
    population = [keras.ops.convert_to_tensor(arrays[f"population_{i}"])
                  for i in range(len(state.population))]
    state = state._replace(
        population=population,
        generation=int(meta["generation"]),
        losses=arrays["losses"],
        best_loss=float(meta["best_loss"]),
        parents=arrays["parents"],
        seeds=arrays["seeds"],
    )
    for parents, seeds in zip(arrays["lineage_parents"], arrays["lineage_seeds"]):
        lineage.record(parents, seeds)
    if meta.get("task_state") and hasattr(task, "set_state"):
        task.set_state(meta["task_state"])
    records = {k: list(v) for k, v in meta["history"].items()}
    return state, int(meta["generation"]), records, bool(meta.get("stopped"))


def _set_csv_columns(callbacks, logs):
    """Gives every `CSVLogger` that has no columns yet exactly the keys of `logs`.

    Keras' `CSVLogger` adds an empty `val_<key>` column for every key when the first
    row has no validation key (as for environment tasks); evolve() logs what it logs.
    """
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.CSVLogger) and callback.keys is None:
            callback.keys = sorted(logs)


def _rewrite_csv_loggers(callbacks, records, generations):
    """Rewrites every `CSVLogger` file from the checkpoint's History, then appends to it.

    A crash between the checkpoint and the logger's row (or in the middle of a row) would
    otherwise lose or tear a generation: after a resume the file has every completed
    generation exactly once, written by Keras' own `CSVLogger` (same format).
    """
    loggers = [c for c in callbacks or [] if isinstance(c, keras.callbacks.CSVLogger)]
    for logger in loggers:
        with checkpoint.atomic_path(logger.filename) as tmp:
            writer = keras.callbacks.CSVLogger(tmp, separator=logger.sep)
            writer.on_train_begin()
            if records:
                writer.keys = sorted(records)
            for generation in range(generations):
                writer.on_epoch_end(
                    generation,
                    {k: v[generation] for k, v in records.items() if generation < len(v)},
                )
            writer.on_train_end()
    return loggers


def _two_stage(strategy, evaluator, population, generation, losses, logs):
    """The paper's two-stage selection, when the strategy asks for it.

    All members were evaluated once (stage 1); the best `reevaluate_top` are evaluated
    again with `reevaluate_episodes` more episodes, their losses become the
    episode-weighted mean of both stages, and only they can become parents.
    """
    top = getattr(strategy.config, "reevaluate_top", None)
    if not top:
        return losses
    order = np.argsort(np.where(np.isfinite(losses), losses, np.inf), kind="stable")[:top]
    result = evaluator.reevaluate(population, order, generation,
                                  strategy.config.reevaluate_episodes)
    if result is None:
        return losses
    second, extra = result
    k1 = evaluator.rollout.task.episodes
    k2 = strategy.config.reevaluate_episodes
    combined = (losses[order] * k1 + second * k2) / (k1 + k2)
    selection = np.full_like(losses, np.inf)
    selection[order] = combined
    clean = np.where(np.isfinite(selection), selection, np.inf)
    elite = int(np.argmin(clean))
    logs["loss"] = float(clean[elite])
    if "episode_return" in logs:
        logs["episode_return"] = -float(clean[elite])
    logs["env_steps"] = logs.get("env_steps", 0) + extra.get("env_steps", 0)
    return selection


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
               batch_size=None):
        """Trains the model by neuroevolution, like `fit()` trains it by gradients.

        Each generation (one "epoch" for callbacks) evaluates the loss given to
        `compile()` for every member of the strategy's population in one compiled,
        vectorised call, then lets the strategy select and mutate. Before every
        `on_epoch_end` the model's variables hold the current elite, and after
        `evolve()` the model holds the best member of the last generation.

        Args:
            x: input data (numpy array or tensor, with `y`), a finite `tf.data.Dataset`
                of `(x, y)` batches, or a `keras_lrne.tasks` task such as
                `LanguageModeling`.
            y: targets for array input; None otherwise.
            validation_data: `(x_val, y_val)` or a dataset of them; the elite's loss on it
                is logged as `val_loss`. Defaults to the task's validation data.
            strategy: a `keras_lrne.strategies.Strategy`. Defaults to
                `GA(population_size=64, num_parents=8)`.
            generations: number of generations (epochs), an integer >= 1.
            callbacks: list of `keras.callbacks.Callback`.
            verbose: "auto", 0, 1 or 2, as in `fit()`.
            seed: integer run seed (random if None). A run is deterministic for a
                fixed seed on one backend and machine.
            population_batch_size: members evaluated in one vectorised call. Automatic by
                default, from the device memory and the model's output size.
            batch_size: samples per member per call (must divide the number of samples;
                the largest divisor not above it is used). Automatic by default.

        Returns:
            A `keras.callbacks.History` whose `history` dict holds, per generation,
            `loss` (the elite's), `mean_loss` and `median_loss` (over members with a
            finite loss), `val_loss` when there is validation data, and throughput
            (`member_evals_per_second`, plus `member_tokens_per_second` for token data).

        Example:

        >>> model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> history = model.evolve(
        ...     keras_lrne.tasks.LanguageModeling(),
        ...     strategy=keras_lrne.strategies.GA(population_size=64, num_parents=8),
        ...     generations=20,
        ... )
        """
        _check_generations(generations)
        check_int("population_batch_size", population_batch_size, allow_none=True)
        check_int("batch_size", batch_size, allow_none=True)
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
            if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
                validation = as_arrays(validation_data[0], validation_data[1], "validation_data")
            else:
                validation = as_arrays(validation_data, None, "validation_data")
        else:
            validation = task.validation_data()
        if validation is not None and not isinstance(task, Environment):
            self._check_validation_shapes(task, validation)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
        ):
            raise ValueError(
                "Received an invalid value for `seed`, expected a non-negative integer or "
                f"None. Received: seed={seed!r}"
            )
        backup = _Backup.find(callbacks)
        resume = backup.open() if backup is not None else None
        completed = False
        try:
            history = self._evolve(task, validation_data, validation, strategy, generations,
                                   callbacks, verbose, seed, population_batch_size,
                                   batch_size, backup, resume)
            completed = True
            return history
        finally:
            if backup is not None:
                backup.close(completed)

    def _evolve(self, task, validation_data, validation, strategy, generations, callbacks,
                verbose, seed, population_batch_size, batch_size, backup, resume):
        """The body of `evolve()` once its arguments are checked and the backup is open."""
        if not hasattr(self, "optimizer"):
            # Environment tasks need no compile(); Keras callbacks (BackupAndRestore,
            # ModelCheckpoint) read `model.optimizer`, which only compile() creates.
            self.optimizer = None
        if seed is None:
            seed = (resume[1]["settings"]["seed"] if resume else
                    int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF))

        is_env = isinstance(task, Environment)
        if is_env:
            if validation_data is not None:
                raise ValueError(
                    "`validation_data` is not used with environment tasks. "
                    f"Received: validation_data of type {type(validation_data).__name__}"
                )
            if not self.built or not self.trainable_variables:
                self(np.zeros((1, *task.input_shape), "float32"), training=False)
            self._check_output_size(task)
            run = _Run(self, strategy, seed, 1, 1, 1, 1)
            evaluator = _EnvironmentEvaluator(self, run, task, strategy, seed)
        else:
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
            run = _Run(self, strategy, seed, pop.estimate_bytes_per_member_sample(self, x0),
                       len(x0), population_batch_size, batch_size)
            evaluator = _SupervisedEvaluator(run, task, validation)
        strategy.bind(run.functions)
        state = strategy.init(pop.initial_population(run.specs, seed, strategy.population_size),
                              seed)
        lineage = Lineage(seed, strategy.population_size,
                          {"strategy": strategy.__class__.__name__, **strategy.get_config(),
                           "evolvable_shapes": [list(s.shape) for s in run.evolvable]})
        self._lrne_run, self._lrne_state, self.lineage = run, state, lineage
        self._lrne_evaluator = evaluator
        settings = _run_settings(seed, strategy, run, task, self, validation_data, validation)
        start, records, stopped = 0, {}, False
        if resume:
            state, start, records, stopped = _restore(resume, backup.path, settings, state,
                                                       lineage, task)
            self._lrne_state = state

        # The BackupAndRestore callback is handled here (see `_Backup`), not by Keras.
        others = [c for c in callbacks or [] if backup is None or c is not backup.callback]
        appending = _rewrite_csv_loggers(others, records, start) if resume else []
        saved_append = [logger.append for logger in appending]
        for logger in appending:
            logger.append = True
        callback_list = keras.callbacks.CallbackList(
            others, add_history=True, add_progbar=verbose != 0, model=self,
            verbose=verbose, epochs=generations, steps=1,
        )
        self.stop_training = False
        callback_list.on_train_begin()
        for logger, append in zip(appending, saved_append):
            logger.append = append
        if resume:
            # After the callbacks' on_train_begin: the model holds the elite of the last
            # completed generation.
            self._set_member(state.population, 0)
            for callback in callback_list.callbacks:
                if isinstance(callback, keras.callbacks.History):
                    callback.epoch = list(range(start))
                    callback.history = {k: list(v) for k, v in records.items()}
        logs = {}
        try:
            # A run that a callback stopped (e.g. EarlyStopping) stays stopped on resume.
            for generation in range(start, start if stopped else generations):
                callback_list.on_epoch_begin(generation)
                callback_list.on_train_batch_begin(0)
                population = strategy.ask(state)
                losses, logs = evaluator.evaluate(population, generation)
                losses = _two_stage(strategy, evaluator, population, generation, losses, logs)
                state = strategy.tell(state, losses)
                lineage.record(state.parents, state.seeds)
                self._set_member(state.population, 0)
                self._lrne_state = state
                logs.update(evaluator.validate(state.population))
                for key, value in logs.items():
                    records.setdefault(key, []).append(value)
                if backup is not None:
                    backup.save(state, lineage, records, task, settings, generation)
                callback_list.on_train_batch_end(0, logs)
                _set_csv_columns(others, logs)
                callback_list.on_epoch_end(generation, logs)
                if self.stop_training:
                    break
            if backup is not None and not stopped:
                backup.finish(state, lineage, records, task, settings,
                              stopped=bool(self.stop_training))
        finally:
            evaluator.close()
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

    def _set_member(self, population, member):
        variables = self.trainable_variables
        for spec, values in zip(self._lrne_run.evolvable, population):
            variables[spec.index].assign(values[member])

    def rebuild_member(self, generation, member, assign=False):
        """Rebuilds one member of the last `evolve()` run from the run seed and its lineage.

        Args:
            generation: population index (0 = initial population; population `g + 1` is the
                one made after evaluating generation `g`).
            member: member index within that population.
            assign: also load the member into the model's variables.

        Returns:
            A list of numpy arrays, one per evolvable trainable variable, in
            `model.trainable_variables` order.
        """
        run = getattr(self, "_lrne_run", None)
        if run is None:
            raise ValueError("`rebuild_member()` needs a model that has been evolved.")
        root, seeds = self.lineage.chain(generation, member)
        return pop.rebuild_values(self, run.specs, run.functions, run.seed, root, seeds,
                                  assign=assign)
