"""The README's quick start runs as written (with a smaller budget)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def quick_start():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    return blocks[0]


def test_readme_commands_are_present():
    text = README.read_text()
    assert 'pip install . && keras-lrne lm' in text
    assert 'pip install -e ".[test]" && pytest && KERAS_BACKEND=jax pytest' in text


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    code = quick_start()
    small = (
        code.replace("population_size=64, num_parents=8", "population_size=4, num_parents=1")
        .replace("generations=50", "generations=2, verbose=0")
        .replace("LanguageModeling()", "LanguageModeling(num_sequences=8)")
    )
    assert small != code
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(small, "README.md", "exec"), namespace)
    assert len(namespace["history"].history["loss"]) == 2
    assert (tmp_path / "log.csv").is_file()
    assert (tmp_path / "elite.keras").is_file()
    assert (tmp_path / "elite_savedmodel" / "saved_model.pb").is_file()
