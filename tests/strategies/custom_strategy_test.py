"""The "write your own strategy" page runs as written, and its strategy resumes exactly."""

import pathlib
import re

import keras
import numpy as np
import pytest

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "custom_strategy.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


@pytest.mark.slow
def test_the_example_strategy_is_short_and_runs_as_written(tmp_path, monkeypatch, capsys):
    code = blocks()
    assert len(code) == 3
    assert len(code[0].strip().splitlines()) < 60 + 15  # the strategy (+ imports, blank lines)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in code:
        exec(compile(block, str(PAGE), "exec"), namespace)
    out = capsys.readouterr().out
    first, last = (float(v) for v in re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < 0.5 * first
    first, last = (float(v) for v in re.search(r"sphere: ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < 0.9 * first


def test_the_example_strategy_resumes_bit_exactly(tmp_path):
    namespace = {}
    exec(compile(blocks()[0], str(PAGE), "exec"), namespace)
    strategy_class = namespace["OnePlusLambda"]
    import keras_lrne

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32")

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("power cut")

    def go(callbacks):
        keras.utils.set_random_seed(0)
        model = keras_lrne.Sequential([keras.Input((6,)),
                                       keras_lrne.layers.FactorizedDense(8, rank=2),
                                       keras.layers.Dense(1)])
        model.compile(loss="mse")
        history = model.evolve(x, y, strategy=strategy_class(5), generations=5, seed=1,
                               verbose=0, callbacks=callbacks)
        return model, history

    backup = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="power cut"):
        go([keras.callbacks.BackupAndRestore(backup), Interrupt()])
    resumed, resumed_history = go([keras.callbacks.BackupAndRestore(backup)])
    straight, straight_history = go([])
    assert resumed_history.history["loss"] == straight_history.history["loss"]
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
