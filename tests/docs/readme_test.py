"""The README's quick starts run as written (with a smaller budget), and the README
stays a front page: at most 200 lines."""

import logging
import pathlib
import re
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def quick_start():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    return blocks[0]


def python_blocks(path=README):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.backend_independent
def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


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


def test_readme_own_model_quick_start_runs(tmp_path, monkeypatch, caplog):
    """The second quick start (any Keras model: low-rank perturbations, then LoRA
    adapters on a compiled fitness) runs as written, at a smaller budget, without a
    warning: its accuracy avoids `argmax`, which makes TensorFlow's vectorising map log
    "Using a while_loop for converting Bitcast"."""
    code = next(b for b in python_blocks() if "enable_lora" in b)
    small = (code.replace("population_size=256", "population_size=8")
             .replace("GA(64, 8)", "GA(8, 2)")
             .replace("generations=50)", "generations=2, verbose=0)"))
    assert small.count("generations=2, verbose=0)") == 2 and "GA(8, 2)" in small
    assert "population_size=8" in small
    monkeypatch.chdir(tmp_path)
    namespace = {}
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error", UserWarning)
        exec(compile(small, "README.md", "exec"), namespace)
    assert len(namespace["history"].history["fitness"]) == 2
    assert not [r for r in caplog.records if "Bitcast" in r.getMessage()]


@pytest.mark.slow
def test_tuning_guide_example_runs(tmp_path, monkeypatch):
    """docs/tuning.md's first example (the README's tuning example moved there)."""
    code = python_blocks(ROOT / "docs" / "tuning.md")[0]
    small = (
        code.replace("population_size=[16, 32, 64]", "population_size=[4]")
        .replace("num_parents=[2, 4, 8]", "num_parents=[1]")
        .replace("rank=[1, 2, 4, 8]", "rank=[1, 2]")
        .replace("max_trials=10", "max_trials=2")
        .replace("generations=20", "generations=2, verbose=0")
        .replace("num_sequences=64", "num_sequences=8")
    )
    assert small.count("[4]") == 1 and "max_trials=2" in small and "verbose=0" in small
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(small, "docs/tuning.md", "exec"), namespace)
    assert len(namespace["tuner"].oracle.trials) == 2
    assert namespace["best_model"].count_params() > 0


def slug(heading):
    """The anchor GitHub (and MkDocs' toc) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.backend_independent
def test_readme_links_resolve():
    """Every relative link of the README names a file or folder of the repository, and
    every anchor a heading of the page it points to."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+ (.*)$", (ROOT / path).read_text(), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, broken


@pytest.mark.backend_independent
def test_readme_links_every_guide():
    nav = (ROOT / "mkdocs.yml").read_text()
    guides = re.search(r"^  - Guides:\n((?:      .*\n)+)", nav, flags=re.M).group(1)
    pages = re.findall(r":\s+(\S+\.md)\s*$", guides, flags=re.M)
    assert len(pages) >= 10
    text = README.read_text()
    missing = [page for page in pages if f"(docs/{page})" not in text]
    assert not missing, f"README.md does not link the guides {missing}"
