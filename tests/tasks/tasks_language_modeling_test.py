"""Tests for `keras_lrne.tasks.language_modeling.LanguageModeling` (hermetic: no network)."""

import json
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_lrne.tasks.language_modeling import LanguageModeling

STORIES = [
    "Once upon a time, there was a little dog named Max. Max liked to run in the park.",
    "Lily found a shiny red ball. She gave it to her friend Tom, and they played all day.",
    "The sun was hot. A small bird sat on a tree and sang a happy song for the children.",
    "Tim had a big box of toys. He shared the toys with his sister, and she smiled.",
] * 25


@pytest.fixture(scope="module")
def word_task():
    return LanguageModeling(sequence_length=32, num_sequences=64, vocab_size=512)


@pytest.fixture(scope="module")
def char_task():
    return LanguageModeling(tokenizer="character", sequence_length=64, num_sequences=128)


def _check_pairs(task, x, y):
    assert x.dtype == np.int32 and y.dtype == np.int32
    assert x.shape == y.shape
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert x.min() >= 1 and y.min() >= 1  # 0 is padding and never appears.
    assert x.max() < task.vocab_size and y.max() < task.vocab_size


def _assert_stream_windows(task, x, y, stream):
    """Every (x, y) row is a window of the token stream, y being x shifted by one."""
    width = task.sequence_length + 1
    windows = stream[: stream.size // width * width].reshape(-1, width)
    rows = {w.tobytes() for w in windows}
    for xi, yi in zip(x, y):
        assert np.concatenate([xi, yi[-1:]]).tobytes() in rows


# ------------------------------------------------------------ default corpus


def test_embedded_corpus_word(word_task):
    task = word_task
    x, y = task.train_data(0)
    assert x.shape == (64, 32)
    _check_pairs(task, x, y)
    assert task.vocab_size == 512
    assert task.vectorizer.vocabulary_size() == 512
    assert len(task.vocabulary) == 512
    assert task.vocabulary[:2] == ["", "[UNK]"]
    assert isinstance(task.vocabulary[2], str)
    assert task.num_tokens > 50_000
    stream = np.asarray(task.vectorizer(["the object is a string , and"])).reshape(-1)
    assert task.decode(stream) == "the object is a string , and"
    text = task.decode(x[0])
    assert isinstance(text, str) and len(text.split(" ")) == 32


def test_embedded_corpus_char(char_task):
    task = char_task
    x, y = task.train_data(0)
    assert x.shape == (128, 64)
    _check_pairs(task, x, y)
    # The real character set of the corpus is far below the 2048 limit.
    assert 30 < task.vocab_size < 2048
    assert task.vocab_size == task.vectorizer.vocabulary_size()
    text = task.decode(x[0])
    assert len(text) == 64
    assert task.decode(task.vectorizer(["Hello, world."])[0]) == "Hello, world."


def test_default_arguments_warn_when_corpus_is_short():
    with pytest.warns(UserWarning, match="num_sequences=1024"):
        task = LanguageModeling()  # word level: ~119k tokens, < 1024 windows of 129.
    assert task.num_sequences < 1024
    x, y = task.train_data(0)
    assert x.shape == (task.num_sequences, 128)
    _check_pairs(task, x, y)


def test_small_vocab_size_is_honoured():
    task = LanguageModeling(
        tokenizer="character", vocab_size=10, sequence_length=16, num_sequences=8
    )
    assert task.vocab_size == 10
    x, _ = task.train_data(0)
    assert x.max() < 10
    assert (x == 1).any()  # rare characters are out-of-vocabulary.


# --------------------------------------------------------- train / validation


def test_fixed_sample_identical_across_generations(word_task):
    x0, y0 = word_task.train_data(0)
    x5, y5 = word_task.train_data(5)
    np.testing.assert_array_equal(x0, x5)
    np.testing.assert_array_equal(y0, y5)
    assert not x0.flags.writeable


def test_fresh_batch_differs_per_generation_and_is_deterministic():
    kwargs = {
        "tokenizer": "character",
        "sequence_length": 32,
        "num_sequences": 16,
        "fresh_batch": True,
    }
    task = LanguageModeling(seed=3, **kwargs)
    x0, y0 = task.train_data(0)
    x1, y1 = task.train_data(1)
    assert x0.shape == x1.shape == (16, 32)
    _check_pairs(task, x0, y0)
    _check_pairs(task, x1, y1)
    assert not np.array_equal(x0, x1)
    np.testing.assert_array_equal(task.train_data(1)[0], x1)
    again = LanguageModeling(seed=3, **kwargs)
    np.testing.assert_array_equal(again.train_data(1)[0], x1)
    other = LanguageModeling(seed=4, **kwargs)
    assert not np.array_equal(other.train_data(1)[0], x1)


def test_seed_changes_fixed_sample():
    kwargs = {"tokenizer": "character", "sequence_length": 32, "num_sequences": 16}
    a = LanguageModeling(seed=0, **kwargs).train_data(0)[0]
    b = LanguageModeling(seed=0, **kwargs).train_data(0)[0]
    c = LanguageModeling(seed=1, **kwargs).train_data(0)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_validation_is_held_out(char_task):
    task = char_task
    vx, vy = task.validation_data()
    assert vx.dtype == np.int32 and vx.shape[1] == 64
    assert vx.shape[0] == 128  # min(num_sequences, available)
    _check_pairs(task, vx, vy)
    train_rows = {r.tobytes() for r in task._train_x}
    assert not any(r.tobytes() in train_rows for r in vx)


def test_validation_split_zero_and_num_validation_sequences():
    kwargs = {"tokenizer": "character", "sequence_length": 32, "num_sequences": 16}
    assert LanguageModeling(validation_split=0, **kwargs).validation_data() is None
    vx, _ = LanguageModeling(num_validation_sequences=5, **kwargs).validation_data()
    assert vx.shape == (5, 32)


def test_windows_come_from_the_token_stream():
    task = LanguageModeling(STORIES, sequence_length=8, num_sequences=20, validation_split=0.25)
    stream = np.concatenate([np.asarray(task.vectorizer([s])).reshape(-1) for s in STORIES]).astype(
        np.int32
    )
    assert task.num_tokens == stream.size
    x, y = task.train_data(0)
    _check_pairs(task, x, y)
    _assert_stream_windows(task, x, y, stream)
    vx, vy = task.validation_data()
    _assert_stream_windows(task, vx, vy, stream)
    # Validation windows come from the end of the stream.
    width = task.sequence_length + 1
    n = stream.size // width
    num_val = int(n * 0.25)
    assert vx.shape[0] == min(20, num_val)
    tail = {w.tobytes() for w in stream[: n * width].reshape(n, width)[n - num_val :]}
    assert all(np.concatenate([a, b[-1:]]).tobytes() in tail for a, b in zip(vx, vy))


# ------------------------------------------------------------------- sources


def test_text_file(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("\n\n".join(STORIES) + "\n\n", encoding="utf-8")
    task = LanguageModeling(text_file=path, sequence_length=16, num_sequences=8)
    x, y = task.train_data(0)
    assert x.shape == (8, 16)
    _check_pairs(task, x, y)
    assert "dog" in task.vocabulary and "," in task.vocabulary
    assert task.get_config()["text_file"] == str(path)
    json.dumps(task.get_config())
    assert task.get_config()["one_document_per_line"] is False
    # One document per line: max_documents keeps only the first stories.
    few = LanguageModeling(text_file=str(path), sequence_length=4, num_sequences=4,
                           max_documents=2, one_document_per_line=True)
    assert few.num_tokens < 50
    assert "bird" not in few.vocabulary


def test_plain_text_file_keeps_every_character_and_line_break(tmp_path):
    text = "ROMEO:\nBut soft!\n\nJULIET:\nAy me.\n" * 40
    path = tmp_path / "play.txt"
    path.write_text(text, encoding="utf-8")
    task = LanguageModeling(text_file=path, tokenizer="character", sequence_length=8,
                            num_sequences=4)
    assert task.num_tokens == len(text)  # not one token lost, line breaks included
    assert "\n" in task.vocabulary
    x, _ = task.train_data(0)
    assert task.vocabulary.index("\n") in x
    lines = LanguageModeling(text_file=path, tokenizer="character", sequence_length=8,
                             num_sequences=4, one_document_per_line=True)
    assert lines.num_tokens == len(text.replace("\n", ""))
    assert "\n" not in lines.vocabulary


def test_plain_text_file_cut_into_pieces_tokenizes_like_the_whole(tmp_path, monkeypatch):
    from keras_lrne.tasks import corpus

    text = "".join(f"line {i} of the file.\n" for i in range(300))
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    whole = LanguageModeling(text_file=path, sequence_length=8, num_sequences=4)
    monkeypatch.setattr(corpus, "_TEXT_CHUNK", 100)  # many pieces
    assert "".join(corpus.load_text_file(path)) == text
    assert len(corpus.load_text_file(path)) > 10
    cut = LanguageModeling(text_file=path, sequence_length=8, num_sequences=4)
    assert cut.num_tokens == whole.num_tokens
    np.testing.assert_array_equal(cut.train_data(0)[0], whole.train_data(0)[0])


def test_max_documents_with_a_plain_text_file_asks_for_one_document_per_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"one_document_per_line=True.*max_documents=2"):
        LanguageModeling(text_file=path, max_documents=2)
    with pytest.raises(ValueError, match="one_document_per_line=1"):
        LanguageModeling(text_file=path, one_document_per_line=1)
    with pytest.raises(ValueError, match="applies to `text_file` only"):
        LanguageModeling(["a b"], one_document_per_line=True)


def test_baselines_uniform_and_unigram():
    # Tokens a and b alternate: a unigram model knows each is half the text (ln 2 per
    # token, add-one smoothing aside), uniform guessing spreads over all 4 ids (ln 4).
    task = LanguageModeling(["a b " * 200], sequence_length=8, num_sequences=4)
    assert task.vocab_size == 4  # padding, OOV, a, b
    assert task.uniform_loss == pytest.approx(np.log(4))
    assert task.unigram_loss == pytest.approx(np.log(2), abs=0.01)
    assert task.baselines() == {"uniform_loss": task.uniform_loss,
                                "unigram_loss": task.unigram_loss}
    # Skewed text: the unigram baseline is the entropy of the token frequencies.
    skewed = LanguageModeling(["a a a b " * 200], sequence_length=8, num_sequences=4)
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert skewed.unigram_loss == pytest.approx(entropy, abs=0.02)


def test_missing_text_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="text_file") as info:
        LanguageModeling(text_file=path)
    assert str(path) in str(info.value)


def test_text_file_that_is_not_utf8_names_the_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    good = "the dog ran.\ncafé\n".encode()  # 'é' is two bytes in UTF-8
    path.write_bytes(good + "a cat saw a bird, très joli\n".encode("latin-1"))
    offset = len(good) + len("a cat saw a bird, tr")
    with pytest.raises(ValueError, match=(
        rf"`text_file`.*not valid UTF-8.*byte 0xe8 at byte offset {offset}, line 3"
    )) as info:
        LanguageModeling(text_file=path)
    assert f"text_file={str(path)!r}" in str(info.value)
    # The offset is the file's, whatever the read chunks (a multi-byte character may
    # straddle two of them).
    from keras_lrne.tasks import corpus

    for chunk_size in (1, 3, 7, 1 << 20):
        assert corpus._first_invalid_utf8(path, chunk_size)[:3] == (offset, 3, 0xE8)


@pytest.mark.parametrize(
    "kwargs",
    [{"data": [""]}, {"data": ["", " ", "\n\t"]}, {"data": [""], "tokenizer": "character"},
     {"data": tf.data.Dataset.from_tensor_slices(["", "  "])}],
)
def test_only_empty_documents_fail_clearly(kwargs):
    # Used to fail inside TensorFlow with "Table not initialized".
    with pytest.raises(ValueError, match=r"`data`.*empty.*blank.*Received: data="):
        LanguageModeling(sequence_length=2, num_sequences=1, **kwargs)


def test_blank_text_file_names_text_file(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"`text_file`.*empty") as info:
        LanguageModeling(text_file=path)
    assert f"text_file={str(path)!r}" in str(info.value)


def test_list_of_strings():
    task = LanguageModeling(STORIES, tokenizer="character", sequence_length=16, num_sequences=8)
    x, y = task.train_data(0)
    assert x.shape == (8, 16)
    _check_pairs(task, x, y)
    assert "data" not in task.get_config()
    assert "LanguageModeling(" in repr(task)


def test_tf_data_of_strings():
    ds = tf.data.Dataset.from_tensor_slices(STORIES)
    task = LanguageModeling(ds, sequence_length=8, num_sequences=8)
    assert task.train_data(0)[0].shape == (8, 8)
    ref = LanguageModeling(STORIES, sequence_length=8, num_sequences=8)
    np.testing.assert_array_equal(task.train_data(0)[0], ref.train_data(0)[0])


def test_tf_data_of_dicts_and_text_feature():
    ds = tf.data.Dataset.from_tensor_slices({"label": np.arange(len(STORIES)), "story": STORIES})
    task = LanguageModeling(ds, sequence_length=8, num_sequences=8)
    assert task.train_data(0)[0].shape == (8, 8)
    task = LanguageModeling(ds, sequence_length=8, num_sequences=8, text_feature="story")
    assert task.text_feature == "story"
    with pytest.raises(ValueError, match=r"`text_feature`.*'label', 'story'.*text_feature='body'"):
        LanguageModeling(ds, text_feature="body")


def test_tf_data_of_token_ids():
    ids = (np.arange(2000) * 7) % 97
    scalar = tf.data.Dataset.from_tensor_slices(ids)
    task = LanguageModeling(scalar, vocab_size=97, sequence_length=10, num_sequences=16)
    assert task.vectorizer is None and task.vocabulary is None
    assert task.vocab_size == 97
    x, y = task.train_data(0)
    assert x.shape == (16, 10) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    _assert_stream_windows(task, x, y, ids.astype(np.int32))
    assert task.decode([3, 4]) == "3 4"
    # 1-D sequences give the same stream.
    seqs = tf.data.Dataset.from_tensor_slices(ids.reshape(100, 20))
    task2 = LanguageModeling(seqs, vocab_size=97, sequence_length=10, num_sequences=16)
    np.testing.assert_array_equal(task2.train_data(0)[0], x)
    # Ragged sequences too.
    ragged = tf.data.Dataset.from_tensor_slices(
        tf.RaggedTensor.from_row_lengths(ids, [500, 1000, 500])
    )
    task3 = LanguageModeling(ragged, vocab_size=97, sequence_length=10, num_sequences=16)
    np.testing.assert_array_equal(task3.train_data(0)[0], x)
    with pytest.raises(ValueError, match=r"`vocab_size`.*97.*vocab_size=50"):
        LanguageModeling(scalar, vocab_size=50, sequence_length=10)


def test_existing_text_vectorization():
    vectorizer = keras.layers.TextVectorization(max_tokens=40, output_mode="int")
    vectorizer.adapt(STORIES)
    task = LanguageModeling(STORIES, tokenizer=vectorizer, sequence_length=8, num_sequences=8)
    assert task.vectorizer is vectorizer
    assert task.vocab_size == 40
    _check_pairs(task, *task.train_data(0))
    # An un-adapted one is adapted to the corpus.
    fresh = keras.layers.TextVectorization(max_tokens=30, output_mode="int")
    task = LanguageModeling(STORIES, tokenizer=fresh, sequence_length=8, num_sequences=8)
    assert task.vocab_size == 30
    with pytest.raises(ValueError, match="tokenizer"):
        LanguageModeling(STORIES, tokenizer=keras.layers.TextVectorization(output_mode="count"))


# ---------------------------------------------------------------------- TFDS


def test_tfds_tiny_shakespeare_mock():
    with tfds.testing.mock_data(num_examples=40):
        task = LanguageModeling(
            "tiny_shakespeare", tokenizer="character", sequence_length=16, num_sequences=8
        )
    x, y = task.train_data(0)
    assert x.shape == (8, 16)
    _check_pairs(task, x, y)
    assert task.get_config()["data"] == "tiny_shakespeare"
    json.dumps(task.get_config())


def test_tfds_lm1b_mock():
    with tfds.testing.mock_data(num_examples=60):
        task = LanguageModeling(
            "lm1b", sequence_length=4, num_sequences=8, max_documents=50, split="test"
        )
        with pytest.raises(ValueError, match=r"`text_feature`.*'text'"):
            LanguageModeling("lm1b", text_feature="nope", sequence_length=4)
    x, y = task.train_data(0)
    assert x.shape == (8, 4)
    _check_pairs(task, x, y)


def test_unknown_tfds_name_is_rejected_quickly():
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"`data`.*'tiny_shakespeare'.*data='tiny_shakespear'"):
        LanguageModeling("tiny_shakespear")
    with pytest.raises(ValueError, match="data='surely_not_a_dataset_xyz'"):
        LanguageModeling("surely_not_a_dataset_xyz")
    assert time.monotonic() - start < 10


# -------------------------------------------------------------------- errors


def test_empty_data():
    with pytest.raises(ValueError, match=r"`data`.*empty"):
        LanguageModeling(tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string)))
    with pytest.raises(ValueError, match=r"`data`.*empty"):
        LanguageModeling([])
    with pytest.raises(ValueError, match=r"`data`.*empty"):
        LanguageModeling(
            tf.data.Dataset.from_tensor_slices(np.zeros((0,), np.int32)), vocab_size=10
        )


def test_sequence_too_long():
    with pytest.raises(
        ValueError, match=r"`sequence_length`.*only \d+ tokens.*sequence_length=5000"
    ):
        LanguageModeling(STORIES[:4], sequence_length=5000)


def test_fewer_windows_than_num_sequences_warns():
    with pytest.warns(UserWarning, match="num_sequences=1000"):
        task = LanguageModeling(STORIES, sequence_length=8, num_sequences=1000)
    assert task.num_sequences == task.num_train_windows < 1000
    assert task.train_data(0)[0].shape == (task.num_sequences, 8)
    assert task.get_config()["num_sequences"] == 1000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sequence_length": 0}, "sequence_length=0"),
        ({"sequence_length": 2.5}, "sequence_length=2.5"),
        ({"num_sequences": -1}, "num_sequences=-1"),
        ({"num_sequences": True}, "num_sequences=True"),
        ({"vocab_size": 0}, "vocab_size=0"),
        ({"vocab_size": 2}, "vocab_size=2"),
        ({"vocab_size": "big"}, "vocab_size='big'"),
        ({"validation_split": 1.0}, "validation_split=1.0"),
        ({"validation_split": -0.1}, "validation_split=-0.1"),
        ({"num_validation_sequences": 0}, "num_validation_sequences=0"),
        ({"tokenizer": "bpe"}, "tokenizer='bpe'"),
        ({"tokenizer": 3}, "tokenizer=3"),
        ({"max_documents": 0}, "max_documents=0"),
        ({"max_documents": 1.5}, "max_documents=1.5"),
        ({"fresh_batch": "yes"}, "fresh_batch='yes'"),
        ({"seed": -1}, "seed=-1"),
        ({"text_feature": 3}, "text_feature=3"),
        ({"data": 42}, "data=42"),
        ({"data": ["ok", 3]}, "data="),
        ({"data": ["a"], "text_file": "x.txt"}, "text_file='x.txt'"),
        ({"text_file": 3}, "text_file=3"),
    ],
)
def test_bad_arguments(kwargs, message):
    name = message.split("=")[0]
    with pytest.raises(ValueError) as info:
        LanguageModeling(**kwargs)
    text = str(info.value)
    assert f"`{name}`" in text
    assert message in text


def test_bad_generation(word_task):
    with pytest.raises(ValueError, match="generation=-1"):
        word_task.train_data(-1)


def test_text_feature_for_non_dict_dataset():
    ds = tf.data.Dataset.from_tensor_slices(STORIES)
    with pytest.raises(ValueError, match="text_feature='text'"):
        LanguageModeling(ds, text_feature="text")


def test_get_config_and_repr(word_task):
    config = word_task.get_config()
    json.dumps(config)
    assert config["data"] is None
    assert config["tokenizer"] == "word"
    assert config["sequence_length"] == 32
    assert config["vocab_size"] == 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = LanguageModeling(**config)
    np.testing.assert_array_equal(rebuilt.train_data(0)[0], word_task.train_data(0)[0])
    assert "sequence_length=32" in repr(word_task)


def test_is_a_task(word_task):
    from keras_lrne.tasks import LanguageModeling as Exported
    from keras_lrne.tasks.base import Task

    assert Exported is LanguageModeling
    assert isinstance(word_task, Task)
    assert word_task.tokens_per_sample == 32
