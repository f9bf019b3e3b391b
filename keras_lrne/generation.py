"""Sampling text from an evolved language model (`keras-lrne generate`)."""

import json
import os

import keras
import numpy as np

TOKENIZER_FILE = "tokenizer.json"
MODEL_FILE = "model.keras"
TOKENIZER_KINDS = ("word", "character")


def load_model(filepath):
    """Loads a `.keras` model file (e.g. a run's `model.keras`), without compiling it.

    Unlike `keras.saving.load_model`, which reports a truncated or damaged file as "File
    not found", a file that exists but is not a complete `.keras` archive is reported as
    truncated or corrupt, naming the path.

    Args:
        filepath: path of the `.keras` file.

    Returns:
        The Keras model.

    Raises:
        ValueError: naming the path, if the file is missing, truncated or corrupt, or
            cannot be loaded.
    """
    import zipfile

    path = os.fspath(filepath)
    if not os.path.isfile(path):
        raise ValueError(f"No model found: {path!r} does not exist.")
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        reason = f"it is not a complete `.keras` zip archive ({error})"
    else:
        reason = None if damaged is None else f"its entry {damaged!r} fails its CRC check"
    if reason is not None:
        raise ValueError(
            f"The model file {path!r} exists ({size} bytes) but is truncated or corrupt: "
            f"{reason}. Save the model again (or re-run) to replace it."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(
            f"The model file {path!r} could not be loaded ({type(error).__name__}: {error})."
        ) from error


def load_run(directory):
    """Loads what `keras-lrne generate` needs from a `keras-lrne lm` output directory.

    Reads `directory/model.keras` (see `load_model`) and `directory/tokenizer.json` (see
    `load_tokenizer`), and checks that the vocabulary has one token per model output.

    Args:
        directory: the `--output` directory of a `keras-lrne lm` run.

    Returns:
        `(model, kind, vocabulary)`, ready for `generate_text(model, prompt, vocabulary,
        tokenizer=kind)`.

    Raises:
        ValueError: naming the file at fault, or when `directory` holds a run that has not
            finished (no `summary.json` beside its backup or lock file).
    """
    from keras_lrne.commands.run_directory import check_finished

    directory = os.fspath(directory)
    check_finished(directory)
    model_path = os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise ValueError(
            f"No model found: {model_path!r} does not exist; pass the output directory of "
            f"a `keras-lrne lm` run (it holds {MODEL_FILE} and {TOKENIZER_FILE}). "
            f"Received: directory={directory!r}"
        )
    tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
    kind, vocabulary = load_tokenizer(tokenizer_path)
    model = load_model(model_path)
    _check_vocab_size(tokenizer_path, vocabulary, output_size(model))
    return model, kind, vocabulary


def output_size(model):
    """The model's number of output classes (the last dimension of its output), or None
    when the model has no symbolic output to read it from."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1 or outputs[0].shape[-1] is None:
        return None
    return int(outputs[0].shape[-1])


def save_tokenizer(task, filepath):
    """Writes a `LanguageModeling` task's tokenizer (kind and vocabulary) as JSON.

    `keras-lrne lm` writes it as `OUTPUT/tokenizer.json`, next to `model.keras`, so that
    `keras-lrne generate OUTPUT --prompt TEXT` can tokenise prompts and decode samples.

    Args:
        task: a `keras_lrne.tasks.LanguageModeling` built from text (not token ids).
        filepath: the JSON file to write.

    Returns:
        `filepath`.
    """
    vectorizer = task.vectorizer
    if vectorizer is None:
        raise ValueError(
            "The task was built from token ids and has no vocabulary to save. Received: "
            f"task={task!r}"
        )
    kind = "character" if vectorizer.get_config().get("split") == "character" else "word"
    with open(filepath, "w", encoding="utf-8") as f:
        json.dump({"format": "keras_lrne_tokenizer", "tokenizer": kind,
                   "vocabulary": task.vocabulary,
                   "sequence_length": int(task.sequence_length)}, f, ensure_ascii=False)
    return filepath


def load_tokenizer(filepath, vocab_size=None):
    """Reads a file written by `save_tokenizer`: returns `(kind, vocabulary)`.

    Args:
        filepath: the JSON file.
        vocab_size: if given, the model's vocabulary size (its output size): a vocabulary
            of another length is refused, naming both numbers and the file.
    """
    if not os.path.isfile(filepath):
        raise ValueError(
            f"No tokenizer found: {filepath!r} does not exist. `keras-lrne generate` needs "
            f"the output directory of a `keras-lrne lm` run (it holds model.keras and "
            f"{TOKENIZER_FILE})."
        )
    with open(filepath, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{filepath!r} is not a keras-lrne tokenizer ({error}).") from None
    if not isinstance(data, dict):
        data = {"format": type(data).__name__}
    if data.get("format") != "keras_lrne_tokenizer" or data.get("tokenizer") not in (
        TOKENIZER_KINDS
    ):
        raise ValueError(
            f"{filepath!r} is not a keras-lrne tokenizer (format={data.get('format')!r}, "
            f"tokenizer={data.get('tokenizer')!r})."
        )
    vocabulary = data.get("vocabulary")
    if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
        raise ValueError(
            f"{filepath!r} is not a valid keras-lrne tokenizer: its vocabulary must be a list "
            f"of strings. Received: vocabulary of type {type(vocabulary).__name__}"
        )
    _check_vocab_size(filepath, vocabulary, vocab_size)
    return data["tokenizer"], vocabulary


def _check_vocab_size(filepath, vocabulary, vocab_size):
    if vocab_size is not None and len(vocabulary) != vocab_size:
        raise ValueError(
            f"The tokenizer {filepath!r} does not match the model: its vocabulary has "
            f"{len(vocabulary)} tokens but the model has {vocab_size} outputs (one per "
            f"token). Use the {TOKENIZER_FILE} written with this model."
        )


def generate_text(model, prompt, vocabulary, *, tokenizer="word", max_tokens=50,
                  temperature=1.0, top_k=None, seed=0):
    """Samples a continuation of `prompt` from a causal language model.

    The model must map `(batch, sequence_length)` token ids to next-token logits at
    every position (as `keras_lrne.presets.language_model` does). The prompt is tokenised
    with the training vocabulary; each new token is sampled from the logits at the last
    position of the most recent `sequence_length` tokens. Padding (id 0) and the
    out-of-vocabulary token (id 1) are never sampled.

    Args:
        model: the evolved language model.
        prompt: the text to continue (at least one token).
        vocabulary: the training vocabulary, index = token id (`task.vocabulary`).
        tokenizer: `"word"` or `"character"`, as in training.
        max_tokens: tokens to generate.
        temperature: softmax temperature; 0 means greedy (argmax).
        top_k: sample only among the `top_k` most likely tokens (None: all).
        seed: sampling seed.

    Returns:
        The continuation as a `str` (without the prompt).

    Example:

    >>> kind, vocab = keras_lrne.generation.load_tokenizer("lrne_output/lm/tokenizer.json")
    >>> model = keras.saving.load_model("lrne_output/lm/model.keras")
    >>> keras_lrne.generation.generate_text(model, "the list", vocab, tokenizer=kind)
    """
    from keras_lrne._validation import check_int
    from keras_lrne.tasks import _text

    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(
            f"Received an invalid value for `tokenizer`, expected one of {TOKENIZER_KINDS}. "
            f"Received: tokenizer={tokenizer!r}"
        )
    check_int("max_tokens", max_tokens)
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(
            "Received an invalid value for `temperature`, expected a number >= 0. "
            f"Received: temperature={temperature!r}"
        )
    check_int("top_k", top_k, allow_none=True)
    vocabulary = list(vocabulary)
    vectorizer = _text.make_vectorizer(tokenizer, len(vocabulary))
    vectorizer.set_vocabulary(vocabulary[2:])  # ids 0 and 1 are padding and OOV
    ids = np.asarray(keras.ops.convert_to_numpy(vectorizer([prompt]))).reshape(-1)
    ids = [int(i) for i in ids if i != 0]
    if not ids:
        raise ValueError(
            "Received an invalid value for `prompt`, expected text with at least one token. "
            f"Received: prompt={prompt!r}"
        )
    length = model.inputs[0].shape[1] if getattr(model, "inputs", None) else None
    length = int(length or len(ids) + max_tokens)
    rng = np.random.default_rng(seed)
    generated = []
    for _ in range(int(max_tokens)):
        context = (ids + generated)[-length:]
        window = np.zeros((1, length), np.int32)
        window[0, : len(context)] = context
        logits = keras.ops.convert_to_numpy(model(window, training=False))
        if logits.shape[-1] != len(vocabulary):  # checked before the first sample
            raise ValueError(
                f"Received an invalid value for `vocabulary`: it has {len(vocabulary)} "
                f"tokens but the model has {logits.shape[-1]} outputs (one per token). "
                f"Received: vocabulary of {len(vocabulary)} tokens"
            )
        logits = np.asarray(logits[0, len(context) - 1], np.float64)
        logits[:2] = -np.inf
        generated.append(_sample(logits, temperature, top_k, rng))
    sep = "" if tokenizer == "character" else " "
    return sep.join(vocabulary[i] for i in generated)


def _sample(logits, temperature, top_k, rng):
    if top_k is not None and top_k < np.isfinite(logits).sum():
        cutoff = np.sort(logits)[-top_k]
        logits = np.where(logits >= cutoff, logits, -np.inf)
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = (logits - np.max(logits)) / temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
