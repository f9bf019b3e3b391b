"""`model.export(dir, format="tf_saved_model")` works for every preset and variant."""

import numpy as np
import pytest

import keras_lrne
from keras_lrne import presets

CASES = [
    *[("lm", v, lambda v: presets.language_model(v, vocab_size=64, sequence_length=16))
      for v in ("factorized", "full", "small")],
    *[("atari", v, lambda v: presets.atari_policy(v, num_actions=6))
      for v in ("factorized", "full", "small")],
    *[("carracing", v, lambda v: presets.carracing_policy(v))
      for v in ("factorized", "full", "small")],
    *[("control", v, lambda v: presets.control_policy(v, input_dim=5, num_actions=2))
      for v in ("factorized", "full", "small")],
]


@pytest.mark.parametrize("family, variant, build", CASES,
                         ids=[f"{f}-{v}" for f, v, _ in CASES])
def test_every_preset_exports_a_saved_model(tmp_path, family, variant, build):
    import tensorflow as tf

    model = build(variant)
    shape = tuple(model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    if family == "lm":
        x = rng.integers(0, 64, (2, *shape)).astype("int32")
    else:
        x = rng.uniform(0, 1, (2, *shape)).astype("float32")
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "export")
    model.export(path, format="tf_saved_model", verbose=False)
    restored = tf.saved_model.load(path)
    np.testing.assert_allclose(restored.serve(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_exporting_an_unbuilt_model_fails_clearly(tmp_path):
    model = keras_lrne.Sequential([keras_lrne.layers.FactorizedDense(4, rank=2)])
    with pytest.raises(ValueError, match="built"):
        model.export(str(tmp_path / "x"), format="tf_saved_model")
