"""TensorFlow, imported only where it is needed (text tasks, TFDS, SavedModel export).

On another Keras backend (JAX), TensorFlow is kept off the GPUs before any of its ops
runs, so the two never compete for device memory.
"""

import contextlib
import sys


def is_dataset(value):
    """Whether `value` is a `tf.data.Dataset` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.data.Dataset)


def import_tensorflow(needed_by="This feature"):
    """Imports and returns TensorFlow; hides the GPUs from it on non-TF backends.

    Args:
        needed_by: what needs it, for the error when TensorFlow is not installed.
    """
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"{needed_by} needs TensorFlow, which is not installed: pip install tensorflow "
            "(the JAX backend needs it only for text tasks, TFDS and SavedModel export)."
        ) from error
    import keras

    if keras.config.backend() != "tensorflow":
        # A RuntimeError: TensorFlow's devices were initialised already.
        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], "GPU")
    return tf
