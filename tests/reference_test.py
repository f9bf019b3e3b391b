"""The GA gives the same runs as the recorded reference (tests/_helpers/reference_runs.py)."""

import json

import pytest
from _helpers import reference_runs


@pytest.mark.parametrize("name", sorted(reference_runs.SCENARIOS))
def test_ga_runs_match_the_recorded_reference(name):
    with open(reference_runs.path()) as f:
        expected = json.load(f)[name]
    reference_runs.check(reference_runs.run(name), expected)
