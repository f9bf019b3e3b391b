import textwrap
import warnings

import keras
import numpy as np
import pytest
from _helpers import forked

import keras_lrne
from keras_lrne import Lineage
from keras_lrne import layers as lrl
from keras_lrne.strategies import GA


def small_model(seed):
    keras.utils.set_random_seed(seed)
    model = keras_lrne.Sequential([keras.Input((6,)),
                                   lrl.FactorizedDense(8, rank=2, activation="relu"),
                                   keras.layers.LayerNormalization(), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = x[:, :1] * 0.5
    model = small_model(0)
    model.evolve(x, y, strategy=GA(10, 3, mutation_rate=0.1), generations=3, seed=11,
                 verbose=0)
    path = str(tmp_path_factory.mktemp("lineage") / "lineage.npz")
    model.lineage.save(path)
    return model, path


def test_lineage_file_rebuilds_members_into_a_fresh_model(run):
    model, path = run
    lineage = Lineage.load(path)
    assert lineage.num_generations == 4 and lineage.population_size == 10
    other = small_model(5)  # same architecture, different initial weights
    for generation, member in ((0, 0), (2, 4), (3, 9)):
        expected = model.rebuild_member(generation, member)
        rebuilt = lineage.rebuild_member(other, generation, member)
        for a, b in zip(expected, rebuilt):
            np.testing.assert_array_equal(a, b)
    # assign=True (the default) loads the member into the model's variables.
    evolvable = [v for v in other.trainable_variables if "normalization" not in v.path]
    for variable, value in zip(evolvable, rebuilt):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)


@pytest.mark.slow
def test_lineage_rebuild_in_a_fresh_process_equals_the_elite(run):
    model, path = run
    elite_weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    # The elite of the last generation is member 0 of the last population (elites are
    # kept first and unchanged).
    code = textwrap.dedent(f"""
        import keras, numpy as np, keras_lrne
        keras.utils.set_random_seed(99)
        model = keras_lrne.Sequential([
            keras.Input((6,)),
            keras_lrne.layers.FactorizedDense(8, rank=2, activation="relu"),
            keras.layers.LayerNormalization(), keras.layers.Dense(1)])
        lineage = keras_lrne.Lineage.load({path!r})
        lineage.rebuild_member(model, lineage.num_generations - 1, 0)
        np.savez({path + '.weights.npz'!r},
                 *[keras.ops.convert_to_numpy(v) for v in model.trainable_variables])
    """)
    result = forked.run(("-c", code), timeout=300)  # a fresh process (tests/_helpers)
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(path + ".weights.npz") as saved:
        rebuilt = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    evolvable = [i for i, v in enumerate(model.trainable_variables)
                 if "normalization" not in v.path]
    expected = model.rebuild_member(model.lineage.num_generations - 1, 0)
    for i, value in zip(evolvable, expected):
        np.testing.assert_array_equal(rebuilt[i], value)
        np.testing.assert_array_equal(elite_weights[i], value)


@pytest.mark.backend_independent
def test_lineage_bad_input(run, tmp_path):
    _, path = run
    lineage = Lineage.load(path)
    wrong = keras_lrne.Sequential([keras.Input((6,)), keras.layers.Dense(3),
                                   keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="differ from the run's"):
        lineage.rebuild_member(wrong, 1, 0)
    with pytest.raises(ValueError, match="`member`"):
        lineage.rebuild_member(small_model(0), 1, 10)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a lineage")
    with pytest.raises(ValueError, match="not a keras-lrne lineage"):
        Lineage.load(str(bad))


def test_lineage_is_a_few_bytes_per_member(run):
    _, path = run
    lineage = Lineage.load(path)
    raw_bytes = sum(p.nbytes + s.nbytes for p, s in zip(lineage.parents, lineage.seeds))
    assert raw_bytes == 8 * lineage.population_size * (lineage.num_generations - 1)


def _rewrite(path, out, checksum="keep", **changes):
    """Copies a lineage file with some entries changed (header entries as a dict)."""
    import json

    from keras_lrne import lineage as lineage_lib

    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(bytes(arrays["header"]).decode())
    for key, value in changes.pop("header", {}).items():
        header[key] = value
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays.update(changes)
    if checksum == "drop":  # a file written before checksums
        del arrays["sha256"]
    elif checksum == "recompute":  # a consistent checksum over invalid records
        digest = lineage_lib._digest(arrays["header"], {"parents": arrays["parents"],
                                                        "seeds": arrays["seeds"]})
        arrays["sha256"] = np.frombuffer(digest.encode(), np.uint8)
    np.savez_compressed(out, **arrays)
    return str(out)


@pytest.mark.backend_independent
def test_modified_lineage_files_are_refused(run, tmp_path):
    _, path = run
    lineage = Lineage.load(path)
    settings = dict(lineage.settings, mutation_rate=0.2)
    parents = np.asarray(lineage.parents).copy()
    parents[1, 4] = (parents[1, 4] + 1) % lineage.population_size
    for name, changes in [("seed", {"header": {"seed": lineage.seed + 1}}),
                          ("rate", {"header": {"settings": settings}}),
                          ("parent", {"parents": parents})]:
        bad = _rewrite(path, tmp_path / f"{name}.npz", **changes)
        with pytest.raises(ValueError, match="checksum does not match") as info:
            Lineage.load(bad)
        assert repr(bad) in str(info.value)
    truncated = tmp_path / "truncated.npz"
    with open(path, "rb") as f:
        truncated.write_bytes(f.read()[:100])
    with pytest.raises(ValueError, match="truncated or corrupted") as info:
        Lineage.load(str(truncated))
    assert repr(str(truncated)) in str(info.value)


@pytest.mark.backend_independent
def test_invalid_lineage_records_name_the_file_and_record(run, tmp_path):
    _, path = run
    lineage = Lineage.load(path)
    size = lineage.population_size
    parents = np.asarray(lineage.parents).copy()
    parents[2, 7] = size  # out of range: used to give a raw IndexError in rebuild_member
    seeds = np.asarray(lineage.seeds).copy()
    cases = [
        ({"parents": parents}, rf"parents\[2\]\[7\]={size} is outside \[0, population_size="),
        ({"seeds": seeds[:, :5]}, r"seeds must be integers of shape"),
        ({"parents": parents[:2]}, r"one row per generation"),
        ({"header": {"population_size": 0}}, r"population_size must be a positive"),
        ({"header": {"seed": "7"}}, r"seed must be a non-negative integer"),
    ]
    for i, (changes, match) in enumerate(cases):
        bad = _rewrite(path, tmp_path / f"bad{i}.npz", checksum="recompute", **changes)
        with pytest.raises(ValueError, match=match) as info:
            Lineage.load(bad)
        assert repr(bad) in str(info.value) and "not a valid keras-lrne lineage" in str(
            info.value)
    with pytest.raises(ValueError, match=r"lineage data is not a valid.*parents\[2\]\[7\]"):
        Lineage.from_bytes((tmp_path / "bad0.npz").read_bytes())


@pytest.mark.backend_independent
def test_lineage_files_without_checksum_load_with_a_warning(run, tmp_path):
    model, path = run
    legacy = _rewrite(path, tmp_path / "legacy.npz", checksum="drop")
    with pytest.warns(UserWarning, match="no SHA-256 checksum"):
        lineage = Lineage.load(legacy)
    expected = model.rebuild_member(3, 9)
    for a, b in zip(expected, lineage.rebuild_member(small_model(5), 3, 9)):
        np.testing.assert_array_equal(a, b)
    # Still validated: an out-of-range parent is a clear error, not an IndexError.
    parents = np.asarray(lineage.parents).copy()
    parents[0, 0] = -3
    bad = _rewrite(path, tmp_path / "legacy_bad.npz", checksum="drop", parents=parents)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"parents\[0\]\[0\]=-3"):
        Lineage.load(bad)
    # Saving it again adds the checksum.
    lineage.save(str(tmp_path / "resaved.npz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Lineage.load(str(tmp_path / "resaved.npz"))
