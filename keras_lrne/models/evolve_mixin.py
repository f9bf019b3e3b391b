"""`EvolveMixin`: adds `evolve()` to a Keras model class."""

import keras

from keras_lrne import engine


class EvolveMixin:
    """Adds `evolve()`, the gradient-free counterpart of `fit()`, to a Keras model.

    Mix it in before the Keras base class (`class MyModel(EvolveMixin, keras.Model)`);
    `keras_lrne.Model` and `keras_lrne.Sequential` already do. Any other Keras model
    evolves through `keras_lrne.evolve(model, ...)`, the same code.
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

        The same as `keras_lrne.evolve(model, ...)` (see `keras_lrne.engine.evolve`),
        which evolves any Keras model. Each generation (one "epoch" for callbacks) asks
        the strategy for a population, evaluates every member with the task's evaluator
        (for data: the loss given to `compile()`, in compiled, vectorised calls) and
        tells the strategy the losses.
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
            across resumes).

        Example:

        >>> model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> history = model.evolve(
        ...     keras_lrne.tasks.LanguageModeling(),
        ...     strategy=keras_lrne.strategies.GA(population_size=64, num_parents=8),
        ...     generations=20,
        ... )
        """
        return engine.evolve(
            self, x, y, validation_data=validation_data, strategy=strategy,
            generations=generations, callbacks=callbacks, verbose=verbose, seed=seed,
            population_batch_size=population_batch_size, batch_size=batch_size,
            freeze_normalization=freeze_normalization, distribution=distribution)

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
        """What the last `evolve()` call built (a `keras_lrne.engine.Run`: strategy,
        seed, variable specs, compiled functions, chunk plan, evaluator), or None."""
        return getattr(self, "_evolution_run", None)

    def _assign(self, weights):
        """Loads `weights` (one tensor per evolvable variable) into the model."""
        engine.assign(self, self._evolution_run.evolvable, weights)

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
        return engine.rebuild_member(self, generation, member, assign=assign)
