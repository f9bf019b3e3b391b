"""The tied output head shared by `FactorizedEmbedding` and `TiedEmbedding`."""

import keras


class TiedHeadMixin:
    """`attend()` and the shapes of `call(inputs, reverse=...)` for embedding layers.

    The layer's `call(inputs, reverse=True)` computes `inputs @ embeddings.T (+ bias)`;
    it needs `input_dim` and `output_dim` attributes.
    """

    def attend(self, inputs):
        """Tied output head: `inputs @ embeddings.T (+ output_bias)`.

        Runs as a normal layer call (`self(inputs, reverse=True)`), so it is
        recorded in functional models and survives `.keras` save/load.
        """
        return self(inputs, reverse=True)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return tuple(input_shape)[:-1] + (self.input_dim,)
        return tuple(input_shape) + (self.output_dim,)

    def compute_output_spec(self, inputs, reverse=False):
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)
