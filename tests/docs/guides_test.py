"""The guides' examples run as written (with smaller budgets) and print no warning.

Docs checks (`backend_independent`, as the project marks them): they check that a
guide's code is complete and copyable; the APIs it calls are tested on both backends
in their own modules.
"""

import logging
import pathlib
import re
import warnings

import pytest

pytestmark = pytest.mark.backend_independent

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def run(code, name, caplog):
    namespace = {}
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error", UserWarning)
        exec(compile(code, name, "exec"), namespace)
    assert not [r for r in caplog.records if "Bitcast" in r.getMessage()]
    return namespace


def shrink(code, replacements):
    for old, new in replacements:
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    return code


def test_low_rank_perturbation_example_runs(caplog):
    code = shrink(python_blocks("low_rank.md")[0], [
        ("population_size=4096", "population_size=8"),
        ("generations=100)", "generations=2, verbose=0)"),
        ("size=(512, 784)", "size=(32, 784)"),
    ])
    namespace = run(code, "docs/low_rank.md", caplog)
    assert len(namespace["history"].history["loss"]) == 2


def test_lora_adapter_example_runs(caplog):
    code = shrink(python_blocks("low_rank.md")[1], [
        ("GA(64, 8)", "GA(8, 2)"),
        ("generations=50)", "generations=2, verbose=0)"),
    ])
    namespace = run(code, "docs/low_rank.md", caplog)
    fitness = namespace["history"].history["fitness"]
    assert len(fitness) == 2 and 0.0 <= fitness[0] <= 1.0


def test_custom_fitness_guide_examples_run(caplog):
    first, second = python_blocks("custom_fitness.md")[:2]
    code = shrink(first + second, [
        ("generations=20, seed=0)", "generations=2, seed=0, verbose=0)"),
        ("GA(32, 4), generations=20)", "GA(8, 2), generations=2, verbose=0)"),
    ])
    namespace = run(code, "docs/custom_fitness.md", caplog)
    assert len(namespace["history"].history["fitness"]) == 2


def test_choosing_a_strategy_example_runs(caplog, capsys):
    code = shrink(python_blocks("strategies.md")[0], [
        ("generations=30, seed=0", "generations=8, seed=0"),
    ])
    run(code, "docs/strategies.md", caplog)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["CMAES", "SepCMAES", "SNES", "PGPE"]
    for line in lines:  # each strategy lowered the loss of the mean it started from
        first, last = map(float, line.split()[1:])
        assert last < first, line


def test_guides_use_no_argmax_in_compiled_fitness():
    """`keras.ops.argmax` in a compiled fitness makes TensorFlow log a warning; the
    guides and the README show the argmax-free accuracy instead."""
    pages = [*DOCS.glob("*.md"), DOCS.parent / "README.md"]
    offenders = [p.name for p in pages
                 if any("keras.ops.argmax" in block for block in python_blocks(p))]
    assert not offenders
