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
def test_lora_finetune_example(tmp_path):
    import json

    results, history = load("lora_finetune").main(
        ["--digits", "2", "--pretrain-steps", "20", "--epoch-steps", "10", "--population",
         "4", "--generations", "2", "--fitness-problems", "8", "--rank", "2",
         "--fit-seconds", "1", "--output", str(tmp_path)])
    assert len(history.history["fitness"]) == 2 and results["generations"] == 2
    assert results["heldout_problems"] == 2000
    assert results["fit_steps"] >= 1 and results["fit_low_lr_steps"] >= 1
    for model in ("before", "after_evolution", "after_fit", "after_fit_low_lr"):
        scores = results[model]
        # Teacher-forced exact match is greedy decoding's, problem for problem.
        assert scores["exact_match"] == scores["greedy_exact_match"]
        assert 0 <= scores["exact_match"] <= scores["digit_accuracy"] <= 1
    # Held-out exact match after evolution is the last generation's val_fitness.
    assert history.history["val_fitness"][-1] == pytest.approx(
        results["after_evolution"]["exact_match"], abs=1e-6)
    for name in ("pretrain.csv", "evolution.csv", "fit_continued.csv",
                 "fit_low_lr_continued.csv"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_lora_finetune_problems_are_split_once_and_encoded_as_text():
    import numpy as np

    example = load("lora_finetune")
    train, dev, heldout = example.split_problems(2)
    assert (len(train), len(dev), len(heldout)) == (6000, 2000, 2000)
    every = np.concatenate([train, dev, heldout])
    assert np.array_equal(np.sort(every), np.arange(10_000))  # disjoint, all problems
    again = example.split_problems(2)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, dev, heldout)))
    x, y = example.encode([123 * 1000 + 456, 999 * 1000 + 999], 3)
    text = ["".join(example.VOCABULARY[t] for t in row) for row in np.c_[x, y[:, -1]]]
    assert text == ["123+456=0579", "999+999=1998"]
    assert np.array_equal(x[:, 1:], y[:, :-1])
    # The reward: 1 only when every answer digit is the argmax.
    logits = np.full((2, 11, 12), -1.0, "float32")
    np.put_along_axis(logits, y[..., None], 1.0, axis=-1)
    logits[1, 7, :] = 0.0
    logits[1, 7, 5] = 2.0  # second problem: its first answer digit is wrong
    assert float(example.exact_match(logits, y)) == 0.5
    logits[1, 2, :] = 5.0  # a prompt position does not count
    assert float(example.exact_match(logits, y)) == 0.5
    assert np.asarray(example.exact_match_metric(y, logits)).tolist() == [1.0, 0.0]


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
