"""`keras-lrne fitness MODULE:FUNCTION --model MODULE:BUILDER`: a fitness of your own from
the command line (a module by name or by path), its outputs, resume and refusals."""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from keras_lrne import cli

# The command's own logic (references, files, refusals) does not depend on the backend;
# evolving on a Fitness is tested on both backends in tests/tasks/fitness_test.py.
pytestmark = pytest.mark.backend_independent

OBJECTIVE = textwrap.dedent('''
    import keras
    import numpy as np


    def build_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3)])


    def load_data():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(48, 4)).astype("float32")
        return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")


    def accuracy(logits, labels):
        predicted = keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32")
        return keras.ops.mean(keras.ops.cast(keras.ops.equal(predicted, labels), "float32"))


    def python_accuracy(model):
        x, y = load_data()
        return float(np.mean(np.argmax(model(x), axis=-1) == y))


    def build_two_inputs():
        keras.utils.set_random_seed(0)
        a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
        return keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))


    def two_inputs():  # a list: the model's two inputs, not (x, y)
        x, _ = load_data()
        return [x, x[:, :2]]


    def mean_output(outputs):
        return keras.ops.mean(outputs)


    def a_scalar():
        return 3.0


    not_a_function = 3
''')


@pytest.fixture()
def objective(tmp_path, monkeypatch):
    path = tmp_path / "my_objective.py"
    path.write_text(OBJECTIVE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("my_objective", None)


def run(*argv):
    return cli.main(["fitness", *argv, "--population", "8", "--parents", "2",
                     "--verbose", "0"])


def test_a_compiled_fitness_by_module_name_writes_a_finished_run(objective, tmp_path):
    out = tmp_path / "out"
    assert run("my_objective:accuracy", "--model", "my_objective:build_model", "--data",
               "my_objective:load_data", "--generations", "3", "--output", str(out)) == 0
    for name in ("history.csv", "fitness.png", "model.keras", "lineage.npz", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["generations"] == 3
    assert 0 <= summary["first_fitness"] <= summary["best_fitness"] <= 1
    # --resume of a finished run changes nothing.
    before = (out / "history.csv").read_text()
    assert run("my_objective:accuracy", "--model", "my_objective:build_model", "--data",
               "my_objective:load_data", "--generations", "3", "--output", str(out),
               "--resume") == 0
    assert (out / "history.csv").read_text() == before


def test_a_python_fitness_from_a_file_path(objective, tmp_path):
    out = tmp_path / "out"
    assert run(f"{objective}:python_accuracy", "--model", f"{objective}:build_model",
               "--per-member", "--generations", "2", "--output", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["function"].endswith("python_accuracy")


def test_a_list_from_data_is_the_inputs_of_a_two_input_model(objective, tmp_path):
    out = tmp_path / "out"
    assert run("my_objective:mean_output", "--model", "my_objective:build_two_inputs",
               "--data", "my_objective:two_inputs", "--generations", "2",
               "--output", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["generations"] == 2


@pytest.mark.parametrize("argv, message", [
    (["my_objective:accuracy", "--model", "my_objective:build_model", "--data",
      "my_objective:a_scalar"], r"--data.*my_objective:a_scalar' returned float 3\.0, not "
     r"data.*tuple \(x, y\)"),
    (["my_objective:accuracy", "--model", "my_objective:build_model"],
     "needs --data MODULE:FUNCTION"),
    (["my_objective:python_accuracy", "--model", "my_objective:build_model", "--per-member",
      "--data", "my_objective:load_data"], "--data is not used with --per-member"),
    (["my_objective:missing", "--model", "my_objective:build_model", "--per-member"],
     "'my_objective' has no function 'missing'"),
    (["my_objective:accuracy", "--model", "my_objective:not_a_function", "--data",
      "my_objective:load_data"], "--model.*no function 'not_a_function'"),
    (["no_such_module_here:fn", "--model", "my_objective:build_model", "--per-member"],
     "Could not import the module 'no_such_module_here'"),
    (["accuracy", "--model", "my_objective:build_model"], "expected MODULE:NAME"),
])
def test_bad_references_are_named(objective, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run(*argv, "--output", str(tmp_path / "out"))
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


# A file named like a standard module, importing a neighbour of its own.
SHADOWING = textwrap.dedent('''
    import keras
    import numpy as np

    import fitness_neighbour


    def build_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


    def score(model):
        return float(np.mean(model(np.ones((2, 4))))) + fitness_neighbour.OFFSET


    def offset():
        return fitness_neighbour.OFFSET + 1
''')


@pytest.fixture()
def json_py(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "json.py").write_text(SHADOWING)
    (folder / "fitness_neighbour.py").write_text("OFFSET = 0.25\n")
    saved = {name: sys.modules.get(name) for name in ("json", "fitness_neighbour")}
    path = list(sys.path)
    yield folder / "json.py"
    for name, module in saved.items():  # whatever happened, leave the process as it was
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    sys.path[:] = path


def test_a_file_is_loaded_privately_with_its_folder_importable(json_py, tmp_path):
    import json as standard_json

    out = tmp_path / "out"
    assert run(f"{json_py}:score", "--model", f"{json_py}:build_model", "--per-member",
               "--generations", "2", "--output", str(out)) == 0
    assert sys.modules["json"] is standard_json  # not replaced by the user's json.py
    assert json.loads((out / "summary.json").read_text())["summary"]["generations"] == 2
    # Ray workers cannot import from this folder: the function and its neighbour travel
    # by value, so a process without the folder on its path runs them.
    import ray

    from keras_lrne.commands import fitness

    payload = ray.cloudpickle.dumps(fitness.resolve(f"{json_py}:offset", "MODULE:FUNCTION"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())())"
    result = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().strip() == "1.25"


@pytest.mark.slow
def test_a_file_loaded_by_path_runs_on_ray_workers(json_py, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "out"
    assert run(f"{json_py}:score", "--model", f"{json_py}:build_model", "--per-member",
               "--generations", "2", "--workers", "1", "--output", str(out)) == 0
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["failed_members"] for row in rows] == ["0.0", "0.0"]  # none failed there
