import math

import numpy as np
import pytest

from keras_lrne.strategies import GA, operators


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"population_size": 4, "num_parents": 4}, "population_size"),
        ({"population_size": 3, "num_parents": 8}, "population_size"),
        ({"population_size": 8, "num_parents": 0}, "num_parents"),
        ({"population_size": 8, "num_parents": 2.0}, "num_parents"),
        ({"population_size": True, "num_parents": 1}, "population_size"),
        ({"population_size": 8, "num_parents": 2, "mutation_rate": 0}, "mutation_rate"),
        ({"population_size": 8, "num_parents": 2, "mutation_rate": float("nan")}, "mutation_rate"),
        ({"population_size": 8, "num_parents": 2, "factor_mutation_rate": -1.0},
         "factor_mutation_rate"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as info:
        GA(**kwargs)
    assert "Received:" in str(info.value)


def test_population_smaller_than_parents_plus_one_message():
    with pytest.raises(ValueError, match=r"population_size=4, num_parents=4"):
        GA(population_size=4, num_parents=4)


def test_defaults_match_the_paper():
    ga = GA(population_size=512, num_parents=16)
    assert ga.mutation_rate == 0.01
    assert math.isclose(ga.factor_mutation_rate, 0.1)
    assert GA.from_config(ga.get_config()).get_config() == ga.get_config()
    assert "population_size=512" in repr(ga)


def test_sanitize_and_truncation_never_pick_nan():
    losses = np.array([np.nan, 3.0, np.inf, 1.0, -np.inf, 2.0])
    clean = operators.sanitize_losses(losses)
    assert np.all(np.isinf(clean[[0, 2, 4]]))
    elites = operators.truncation_selection(losses, 3)
    np.testing.assert_array_equal(elites, [3, 5, 1])


def test_uniform_parents_and_seeds_are_deterministic():
    a = operators.generation_rng(7, 3)
    b = operators.generation_rng(7, 3)
    elites = np.array([5, 9, 2])
    pa = operators.uniform_parents(a, elites, 100)
    pb = operators.uniform_parents(b, elites, 100)
    np.testing.assert_array_equal(pa, pb)
    assert set(pa.tolist()) == {5, 9, 2}
    sa, sb = operators.child_seeds(a, 50), operators.child_seeds(b, 50)
    np.testing.assert_array_equal(sa, sb)
    assert sa.min() >= 0
    assert len(set(operators.child_seeds(operators.generation_rng(7, 4), 50).tolist())) > 40
