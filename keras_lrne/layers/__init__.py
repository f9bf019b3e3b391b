"""Keras layers of keras-lrne: low-rank factorized layers and the paper's blocks."""

from keras_lrne.layers.factorized_attention import FactorizedAttention
from keras_lrne.layers.factorized_conv2d import FactorizedConv2D
from keras_lrne.layers.factorized_dense import FactorizedDense
from keras_lrne.layers.factorized_embedding import FactorizedEmbedding
from keras_lrne.layers.rotary_position import RotaryPosition
from keras_lrne.layers.tied_embedding import TiedEmbedding
from keras_lrne.layers.transformer_block import TransformerBlock

__all__ = [
    "FactorizedAttention",
    "FactorizedConv2D",
    "FactorizedDense",
    "FactorizedEmbedding",
    "RotaryPosition",
    "TiedEmbedding",
    "TransformerBlock",
]
