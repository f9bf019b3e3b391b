"""keras-lrne: low-rank neuroevolution for Keras."""

__version__ = "0.1.0"
