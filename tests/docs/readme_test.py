"""The README's quick start runs as written (with a smaller budget)."""

import pathlib
import re
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def quick_start():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    return blocks[0]


@pytest.mark.backend_independent
def test_readme_commands_are_present():
    text = README.read_text()
    assert 'pip install . && keras-lrne lm' in text
    assert ('pip install -e ".[test]" && pytest -n auto && KERAS_BACKEND=jax pytest -n auto '
            '-m "not backend_independent"') in text
    assert 'pip install -e ".[test]" && pytest -m "not slow"' in text  # the inner loop


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """At a smaller budget (the README's own, 300 generations, takes about a minute on 2
    cores), without any warning: a user who copies it sees none."""
    code = quick_start()
    small = (
        code.replace("population_size=32, num_parents=4", "population_size=4, num_parents=1")
        .replace("generations=300", "generations=2, verbose=0")
        .replace("num_sequences=32)", "num_sequences=8)")
    )
    assert small.count("generations=2,") == 1 and "num_sequences=8)" in small
    assert "population_size=4" in small
    monkeypatch.chdir(tmp_path)
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        exec(compile(small, "README.md", "exec"), namespace)
        # Loading what it saved warns neither (rank, optimizer variables).
        namespace["keras"].saving.load_model(tmp_path / "elite.keras")
    assert len(namespace["history"].history["loss"]) == 2
    assert (tmp_path / "log.csv").is_file()
    assert (tmp_path / "elite.keras").is_file()
    assert (tmp_path / "elite_savedmodel" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_readme_tuning_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "EvolutionHyperModel" in b)
    small = (
        code.replace("population_size=[16, 32]", "population_size=[4]")
        .replace("num_parents=[2, 4]", "num_parents=[1]")
        .replace("rank=[1, 2, 4]", "rank=[1, 2]")
        .replace("max_trials=8", "max_trials=2")
        .replace("generations=20", "generations=2, verbose=0")
        .replace("num_sequences=64", "num_sequences=8")
    )
    assert small.count("[4]") == 1 and "max_trials=2" in small
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile("import keras, keras_lrne\n" + small, "README.md", "exec"), namespace)
    assert len(namespace["tuner"].oracle.trials) == 2
    assert namespace["best_model"].count_params() > 0
