import json
import zipfile

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import generation

VOCABULARY = ["", "[UNK]", "the", "dog", "ran", "."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A `keras-lrne lm`-like output directory: model.keras and tokenizer.json."""
    directory = tmp_path_factory.mktemp("lm")
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([
        keras.Input((4,), dtype="int32"),
        keras_lrne.layers.FactorizedEmbedding(len(VOCABULARY), 4, rank=2),
        keras.layers.Dense(len(VOCABULARY)),
    ])
    model.save(str(directory / "model.keras"))
    _write_tokenizer(directory / "tokenizer.json", VOCABULARY)
    return directory


def _write_tokenizer(path, vocabulary):
    path.write_text(json.dumps({"format": "keras_lrne_tokenizer", "tokenizer": "word",
                                "vocabulary": vocabulary, "sequence_length": 4}))


def _copy_run(run_dir, tmp_path):
    for name in ("model.keras", "tokenizer.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    return tmp_path


def test_load_run_loads_the_model_and_tokenizer(run_dir):
    model, kind, vocabulary = generation.load_run(run_dir)
    assert kind == "word" and vocabulary == VOCABULARY
    text = generation.generate_text(model, "the dog", vocabulary, tokenizer=kind,
                                    max_tokens=3, seed=0)
    assert len(text.split()) == 3


def test_truncated_model_file_is_not_reported_as_missing(run_dir, tmp_path):
    directory = _copy_run(run_dir, tmp_path)
    path = directory / "model.keras"
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b""):
        path.write_bytes(damaged)
        for load in (generation.load_model, lambda p: generation.load_run(p.parent)):
            with pytest.raises(ValueError, match=r"exists .* but is truncated or corrupt") as e:
                load(path)
            assert repr(str(path)) in str(e.value)
            assert "not found" not in str(e.value).lower()
    # A complete archive whose contents were altered fails its CRC check.
    with zipfile.ZipFile(directory / "intact.keras", "w") as archive:
        archive.writestr("config.json", "{}" * 100)
    raw = bytearray((directory / "intact.keras").read_bytes())
    raw[raw.index(b"{}{}") + 3] ^= 0xFF
    (directory / "flipped.keras").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"'config.json' fails its CRC check"):
        generation.load_model(directory / "flipped.keras")
    with pytest.raises(ValueError, match=r"No model found: .*missing.keras.* does not exist"):
        generation.load_model(directory / "missing.keras")


def test_tokenizer_of_the_wrong_length_is_refused(run_dir, tmp_path):
    directory = _copy_run(run_dir, tmp_path)
    tokenizer = directory / "tokenizer.json"
    _write_tokenizer(tokenizer, VOCABULARY + ["cat"])
    message = (r"tokenizer .*tokenizer.json.* its vocabulary has 7 tokens but the model has "
               r"6 outputs")
    with pytest.raises(ValueError, match=message):
        generation.load_run(directory)
    with pytest.raises(ValueError, match=message):
        generation.load_tokenizer(str(tokenizer), vocab_size=6)
    assert generation.load_tokenizer(str(tokenizer), vocab_size=7)[1][-1] == "cat"
    # generate_text itself checks before sampling (used to generate silently).
    model = generation.load_model(directory / "model.keras")
    with pytest.raises(ValueError, match=r"`vocabulary`: it has 5 tokens but the model has 6"):
        generation.generate_text(model, "the", VOCABULARY[:5], max_tokens=2)
    _write_tokenizer(tokenizer, {"the": 2})
    with pytest.raises(ValueError, match="vocabulary must be a list of strings"):
        generation.load_run(directory)


def test_output_size():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    assert generation.output_size(model) == 5
    assert np.shape(model(np.zeros((1, 3))))[-1] == 5


def test_an_unfinished_run_is_not_read(run_dir, tmp_path):
    directory = _copy_run(run_dir, tmp_path)
    (directory / "backup").mkdir()  # interrupted (or an --overwrite started over it)
    with pytest.raises(ValueError, match=r"holds a keras-lrne run that has not finished.*"
                                         r"--resume"):
        generation.load_run(directory)
    (directory / "summary.json").write_text("{}")
    assert generation.load_run(directory)[1] == "word"
