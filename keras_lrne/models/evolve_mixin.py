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
        # The docstring is `keras_lrne.evolve`'s, for a method (`engine.method_docstring`):
        # one text for both.
        return engine.evolve(
            self, x, y, validation_data=validation_data, strategy=strategy,
            generations=generations, callbacks=callbacks, verbose=verbose, seed=seed,
            population_batch_size=population_batch_size, batch_size=batch_size,
            freeze_normalization=freeze_normalization, distribution=distribution)

    evolve.__doc__ = engine.method_docstring(engine.evolve)

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
