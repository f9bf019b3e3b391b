import importlib.util
import logging
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_language_model_example():
    history = load("language_model").main(
        ["--generations", "2", "--population", "4", "--parents", "1", "--sequence-length",
         "16", "--num-sequences", "4", "--verbose", "0"]
    )
    assert len(history.history["loss"]) == 2 and "val_loss" in history.history


@pytest.mark.slow
def test_custom_model_example():
    history = load("custom_model").main(["--generations", "3", "--population", "8",
                                         "--parents", "2", "--verbose", "0"])
    losses = history.history["loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]  # strict: fails if mutation did nothing


@pytest.mark.slow
def test_custom_fitness_example(caplog):
    with caplog.at_level(logging.WARNING):
        compiled, python = load("custom_fitness").main(
            ["--generations", "5", "--population", "16", "--parents", "4",
             "--python-generations", "2", "--verbose", "0"])
    fitness = compiled.history["fitness"]
    assert len(fitness) == 5 and fitness[-1] > fitness[0]
    assert python.history["failed_members"] == [0, 0]
    # No argmax in the compiled fitness: TensorFlow's vectorising map logs nothing.
    assert not [r for r in caplog.records if "Bitcast" in r.getMessage()]


def test_custom_fitness_accuracy_equals_argmax_accuracy():
    """The example's argmax-free accuracy is `mean(argmax(logits) == labels)`."""
    import keras

    accuracy = load("custom_fitness").accuracy
    rng = np.random.default_rng(0)
    for classes in (2, 3, 10):
        logits = rng.normal(size=(257, classes)).astype("float32")
        labels = rng.integers(0, classes, 257).astype("int32")
        labels[:100] = logits[:100].argmax(axis=1)  # a mix of right and wrong
        expected = np.mean(logits.argmax(axis=1) == labels)
        value = float(keras.ops.convert_to_numpy(accuracy(logits, labels)))
        assert value == pytest.approx(expected, abs=1e-7)


@pytest.mark.slow
def test_lora_finetune_example():
    results, history = load("lora_finetune").main(
        ["--pretrain-seconds", "1", "--population", "4", "--generations", "2",
         "--num-sequences", "4", "--rank", "2"])
    assert len(history.history["fitness"]) == 2 and results["generations"] == 2
    for key in ("heldout_accuracy", "heldout_loss", "train_accuracy"):
        assert {f"{key}_before", f"{key}_after"} <= set(results)
    # Every member starts at the pretrained model: generation 0's elite is the base.
    assert history.history["fitness"][0] == pytest.approx(results["train_accuracy_before"],
                                                          abs=1e-4)


@pytest.mark.slow
def test_atari_example():
    history = load("atari").main(["--game", "Pong", "--population", "3", "--parents", "1",
                                  "--generations", "2", "--max-episode-steps", "20",
                                  "--verbose", "0"])
    assert len(history.history["episode_return"]) == 2


@pytest.mark.slow
def test_carracing_example():
    history = load("carracing").main(["--population", "3", "--parents", "1",
                                      "--reevaluate-top", "2", "--episodes", "1",
                                      "--reevaluate-episodes", "1", "--generations", "1",
                                      "--max-episode-steps", "15", "--verbose", "0"])
    assert len(history.history["early_termination_saved"]) == 1


@pytest.mark.slow
def test_control_example():
    history = load("control").main(["--population", "4", "--parents", "1", "--generations",
                                    "2", "--max-episode-steps", "20", "--verbose", "0"])
    assert len(history.history["episode_return"]) == 2


@pytest.mark.backend_independent
def test_every_example_option_has_help_and_shows_its_default():
    import ast

    for path in sorted(EXAMPLES.glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "attr", None) in ("add_argument", "ArgumentParser")]
        for call in calls:
            keywords = {k.arg: k.value for k in call.keywords}
            if call.func.attr == "ArgumentParser":
                assert ast.unparse(keywords["formatter_class"]).endswith(
                    "ArgumentDefaultsHelpFormatter"), path.name
            else:
                assert "help" in keywords, (path.name, ast.unparse(call.args[0]))
