"""Unit tests of the engine's parts: chunk and progress planning, generic checkpoints."""

import inspect
import re
from typing import NamedTuple

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import checkpoint
from keras_lrne import population as pop
from keras_lrne.evaluators import plan_groups


@pytest.mark.parametrize("members, chunk", [(14, 4), (512, 16), (33, 11), (7, 7), (100, 3)])
def test_progress_groups_cover_every_member_once_with_one_shape(members, chunk):
    size, groups = plan_groups(members, chunk)
    assert (len(groups) <= 16 and size % chunk == 0) or size == members
    covered = []
    for start, skip in groups:
        assert start >= 0 and start + size <= members
        covered.extend(range(start + skip, start + size))
    assert covered == list(range(members))


def test_chunk_plan_divides_the_data_and_fits_the_budget():
    chunk, batch = pop.plan_chunks(64, 96, bytes_per_member_sample=1000, budget=200_000)
    assert 96 % batch == 0
    assert chunk * batch * 1000 <= 200_000
    assert pop.plan_chunks(64, 96, 1000, population_batch_size=5, budget=200_000)[0] == 5
    assert pop.plan_chunks(64, 96, 1000, batch_size=7, budget=10**9)[1] == 6  # a divisor


GIB = 2**30


def _fake_accelerator(monkeypatch, limit, in_use):
    """Makes the active backend see one accelerator with `limit` bytes, `in_use` taken."""
    if keras.config.backend() == "jax":
        import jax

        class Device:
            platform = "gpu"

            def memory_stats(self):
                return {"bytes_limit": limit, "bytes_in_use": in_use}

        monkeypatch.setattr(jax, "devices", lambda *args: [Device()])
    else:
        import tensorflow as tf

        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
        monkeypatch.setattr(tf.config.experimental, "get_device_details",
                            lambda device: {"memory_limit": limit})
        monkeypatch.setattr(tf.config.experimental, "get_memory_info",
                            lambda device: {"current": in_use, "peak": in_use})


def test_chunks_are_planned_from_the_free_device_memory(monkeypatch):
    from keras_lrne import backend as lrne_backend

    _fake_accelerator(monkeypatch, limit=16 * GIB, in_use=0)
    assert lrne_backend.get().device_memory_bytes() == 16 * GIB
    assert pop.memory_budget() == 2 * GIB
    empty = pop.plan_chunks(512, 1024, bytes_per_member_sample=2**20)
    _fake_accelerator(monkeypatch, limit=16 * GIB, in_use=14 * GIB)  # 2 GiB left
    assert lrne_backend.get().device_memory_bytes() == 2 * GIB
    assert pop.memory_budget() == GIB // 4
    busy = pop.plan_chunks(512, 1024, bytes_per_member_sample=2**20)
    assert busy[0] * busy[1] * 2**20 <= GIB // 4 < empty[0] * empty[1] * 2**20
    _fake_accelerator(monkeypatch, limit=GIB, in_use=2 * GIB)  # over-committed: no room
    assert lrne_backend.get().device_memory_bytes() == 0
    assert pop.plan_chunks(8, 4, 2**20) == (1, 1)  # still plans one member, one sample


class _State(NamedTuple):
    population: list
    table: np.ndarray
    tensor: object
    generation: int
    seed: int
    losses: object
    best_loss: float
    name: str


def test_any_strategy_state_round_trips_through_a_checkpoint_bit_exactly(tmp_path):
    rng = np.random.default_rng(0)
    state = _State(
        population=[keras.ops.convert_to_tensor(rng.normal(size=(3, 4)).astype("float32")),
                    keras.ops.convert_to_tensor(rng.normal(size=(3,)).astype("float32"))],
        table=np.arange(5, dtype=np.int32), tensor=keras.ops.ones((2, 2)),
        generation=7, seed=3, losses=np.asarray([1.0, np.inf, 2.0]), best_loss=1.0,
        name="x",
    )
    arrays, meta = checkpoint.state_to_arrays(state)
    path = str(tmp_path / "state.lrne")
    checkpoint.save(path, arrays, {"state": meta})
    arrays, meta = checkpoint.load(path)
    template = state._replace(losses=None, generation=0, population=[None, None])
    restored = checkpoint.state_from_arrays(template, arrays, meta["state"])
    assert (restored.generation, restored.seed, restored.name) == (7, 3, "x")
    assert isinstance(restored.table, np.ndarray) and isinstance(restored.losses, np.ndarray)
    for a, b in zip(restored.population + [restored.tensor],
                    state.population + [state.tensor]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(restored.losses, state.losses)


def test_state_fields_that_cannot_be_saved_are_named():
    class Bad(NamedTuple):
        generation: int
        thing: object

    with pytest.raises(TypeError, match="'thing'"):
        checkpoint.state_to_arrays(Bad(0, {"a": object()}))


def test_a_corrupted_checkpoint_is_refused_and_settings_differences_are_named(tmp_path):
    path = str(tmp_path / "c.lrne")
    checkpoint.save(path, {"a": np.zeros(3)}, {"settings": {"seed": 1}})
    target = tmp_path / "c.lrne"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match=r"task\.episodes: checkpoint 1 vs now 2"):
        checkpoint.check_settings({"task": {"episodes": 1}}, {"task": {"episodes": 2}}, path)


def test_scalar_lists_and_numpy_bools_keep_their_types_through_a_checkpoint():
    class Small(NamedTuple):
        generation: int
        flags: tuple
        done: object

    state = Small(3, (1, 2.5, True), np.bool_(True))
    arrays, meta = checkpoint.state_to_arrays(state)
    restored = checkpoint.state_from_arrays(Small(0, (), None), arrays, meta)
    assert restored == (3, (1, 2.5, True), True) and isinstance(restored.flags, tuple)


def test_a_checkpoint_of_an_older_format_is_named_as_such(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="older keras-lrne"):
        checkpoint.restore_run(({}, {"settings": {}, "generation": 3}), "old.lrne", {},
                               None, None, None)


@pytest.mark.backend_independent
def test_the_evolve_method_and_function_share_one_docstring():
    # `model.evolve` is documented by `keras_lrne.evolve`'s text, less its `model`
    # argument: every other argument, the returned logs and the example are the same.
    function = inspect.cleandoc(keras_lrne.evolve.__doc__)
    method = inspect.cleandoc(keras_lrne.Sequential.evolve.__doc__)

    def section(doc, name):
        return doc.split(f"\n{name}:\n", 1)[1].split("\n\n", 1)[0]

    def arguments(doc):
        return re.findall(r"^    (\w+): ", section(doc, "Args"), re.M)

    assert arguments(method) == [a for a in arguments(function) if a != "model"]
    assert section(method, "Returns") == section(function, "Returns")
    assert method.split("\nExample:\n")[1] == function.split("\nExample:\n")[1]
    assert method.startswith("Trains the model by neuroevolution")
