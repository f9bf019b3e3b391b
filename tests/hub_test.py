"""KerasHub: a causal LM with LoRA adapters (`backbone.enable_lora`), evolved by
`keras_lrne.evolve` on a `tasks.Fitness` computed from its logits.

Hermetic: a tiny GPT-2 built from its config (random weights, no preset download,
no tokenizer). Only the LoRA factors evolve; the backbone's other weights stay
bit-identical.
"""

import math

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_lrne  # noqa: E402
from keras_lrne import genome  # noqa: E402
from keras_lrne.strategies import GA, OpenES  # noqa: E402
from keras_lrne.tasks import Fitness  # noqa: E402

VOCABULARY, LENGTH, RANK = 100, 8, 4


def causal_lm(seed=0):
    """A 2-layer GPT-2 causal LM with rank-4 LoRA on its attention query/value."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=16)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    backbone.enable_lora(RANK)
    return model


def token_data(n=16, seed=0):
    """Fixed random sequences: inputs are tokens `[:-1]`, targets tokens `[1:]`."""
    tokens = np.random.default_rng(seed).integers(0, VOCABULARY, (n, LENGTH + 1))
    tokens = tokens.astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((n, LENGTH), "int32")}
    return x, tokens[:, 1:]


def target_log_prob(logits, targets):
    """Mean log-probability of the next token (a reward from the logits; keras.ops)."""
    log_probs = keras.ops.log_softmax(keras.ops.cast(logits, "float32"), axis=-1)
    picked = keras.ops.sum(log_probs * keras.ops.one_hot(targets, VOCABULARY), axis=-1)
    return keras.ops.mean(picked)


def values(model):
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.variables}


def is_lora(path):
    return path.rsplit("/", 1)[-1].startswith("lora_")


def fitness_logs(history):
    """The History without its timings (which differ between two equal runs)."""
    return {k: v for k, v in history.history.items() if "second" not in k}


def evolve(strategy, seed=0, model_seed=0, generations=3):
    model = causal_lm(model_seed)
    x, y = token_data()
    before = values(model)
    history = keras_lrne.evolve(model, Fitness(target_log_prob, data=(x, y)),
                                strategy=strategy, generations=generations, seed=seed,
                                verbose=0)
    return model, history, before


STRATEGIES = {
    "GA": lambda: GA(population_size=6, num_parents=2, mutation_rate=0.05),
    "OpenES": lambda: OpenES(population_size=6, sigma=0.05, learning_rate=0.05),
}


def test_only_the_lora_factors_are_evolvable():
    model = causal_lm()
    specs = genome.collect_variable_specs(model)
    lora = [s.path for s in specs if s.lora]
    # query and value of both layers, an `_a` and a `_b` factor each.
    assert len(lora) == 2 * 2 * 2
    assert all(p.rsplit("/", 1)[-1] in ("lora_kernel_a", "lora_kernel_b") for p in lora)
    assert [s.path for s in specs if s.evolvable] == lora
    # enable_lora leaves the query/value biases trainable: they are frozen, not evolved.
    frozen = [s.path for s in specs if not s.evolvable]
    assert frozen and all(p.endswith("bias") for p in frozen)
    # Every member starts at the pretrained model: the `_b` factors are zero.
    seed_values = genome.initial_member(specs, seed=0, member=3)
    for spec, value in zip([s for s in specs if s.evolvable], seed_values):
        assert value.shape == spec.shape
        if spec.path.endswith("_b"):
            assert not np.any(value)


@pytest.fixture(scope="module", params=sorted(STRATEGIES))
def two_runs(request):
    """`(name, [(model, history, values before), ...])`: the same run twice (seed 5)."""
    return request.param, [evolve(STRATEGIES[request.param](), seed=5) for _ in range(2)]


def test_evolves_lora_and_keeps_the_base_weights(two_runs):
    name, [(model, history, before), _] = two_runs
    logs = history.history
    assert len(logs["fitness"]) == 3
    for key in ("fitness", "mean_fitness", "median_fitness", "loss"):
        assert all(math.isfinite(v) for v in logs[key]), (key, logs[key])
    assert logs["loss"] == [-f for f in logs["fitness"]]
    if name == "GA":  # the elite is kept: its fitness never drops
        assert all(b >= a for a, b in zip(logs["fitness"], logs["fitness"][1:]))

    after = values(model)
    assert set(after) == set(before)
    base = [p for p in before if not is_lora(p)]
    assert base
    for path in base:  # every non-LoRA variable, trainable or not
        assert np.array_equal(before[path], after[path]), path
    changed = [p for p in before if is_lora(p) and not np.array_equal(before[p], after[p])]
    assert changed
    # The adapters moved away from the pretrained model.
    assert any(np.any(after[p]) for p in after if p.endswith("lora_kernel_b"))

    # The logged fitness is that of the weights the model holds, through Keras' own
    # (merged-LoRA) call, while evolve() evaluated the factors unmerged.
    x, y = token_data()
    direct = float(keras.ops.convert_to_numpy(target_log_prob(model(x), y)))
    assert logs["fitness"][-1] == pytest.approx(direct, rel=1e-4, abs=1e-5)


def test_the_same_seed_repeats_the_run(two_runs):
    _, [(first, history_a, _), (second, history_b, _)] = two_runs
    assert fitness_logs(history_a) == fitness_logs(history_b)
    # Two models: their auto-generated layer names differ, so compare in order.
    for a, b in zip(first.variables, second.variables, strict=True):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)), a.path


def test_python_fitness_per_member_matches_the_compiled_form():
    """`Fitness(fn(model), per_member=True)`: the members' weights are written into the
    model (merged by Keras' LoRA) and scored by `model.predict`; the same seed gives the
    same population, so the same fitness as the compiled form, and the base weights stay
    bit-identical."""
    x, y = token_data()

    def predicted_log_prob(model):
        logits = model.predict(x, batch_size=len(y), verbose=0)
        return float(keras.ops.convert_to_numpy(target_log_prob(logits, y)))

    _, compiled, _ = evolve(GA(4, 2, mutation_rate=0.05), seed=1, generations=2)
    model = causal_lm()
    before = values(model)
    python = keras_lrne.evolve(model, Fitness(predicted_log_prob, per_member=True),
                               strategy=GA(4, 2, mutation_rate=0.05), generations=2,
                               seed=1, verbose=0)
    for key in ("fitness", "mean_fitness", "median_fitness"):
        np.testing.assert_allclose(python.history[key], compiled.history[key],
                                   rtol=1e-4, atol=1e-5)
    assert python.history["failed_members"] == [0, 0]
    after = values(model)
    for path in before:
        if not is_lora(path):
            assert np.array_equal(before[path], after[path]), path
