"""LoRA fine-tuning by evolution: `keras-lrne lm --lora RANK` and `examples/lora_finetune.py`.

A language model is first trained by gradients (Keras `fit()` with Adam) for a fixed
number of seconds; then Keras LoRA adapters (`layer.enable_lora(rank)`) are added to
its `Dense` and `EinsumDense` layers and only the adapters are evolved, on a reward
that gradient descent cannot use directly: the exact-match accuracy of the greedy next
token (`argmax` of the logits equals the target), as a `keras_lrne.tasks.Fitness`. The
base weights stay frozen and bit-identical; every member starts at the pretrained model.

The helpers here are what the example and the command share; `run_lora` is the
command's run (output directory, pretrained weights, resume, summary). Nothing here
imports Keras at import time.
"""

import json
import os
import time

from keras_lrne.commands import run_directory

#: The pretrained (base) weights of a `--lora` run, saved before evolution starts.
PRETRAINED_WEIGHTS = "pretrained.weights.h5"
#: What the pretraining did, and the settings it was done with (written after the weights).
PRETRAINED_INFO = "pretrained.json"
#: Adam's learning rate and the batch size of the pretraining (Keras' defaults).
PRETRAIN_LEARNING_RATE = 0.001
PRETRAIN_BATCH_SIZE = 32
#: The settings that decide the pretrained weights: a resumed run must share them.
PRETRAINING_SETTINGS = (
    "variant", "rank", "embed_rank", "init", "dataset", "text_file",
    "one_document_per_line", "max_documents", "tokenizer", "vocab_size", "sequence_length",
    "seed", "pretrain_seconds",
)


def next_token_accuracy(logits, labels):
    """The exact-match accuracy of the greedy next token: the fraction of positions where
    `argmax(logits)` is the target token.

    A compiled fitness (`keras_lrne.tasks.Fitness(next_token_accuracy, data=(x, y))`,
    maximised): traced inside the population call, so `keras.ops` only. It has no useful
    gradient (argmax is piecewise constant), so `fit()` cannot optimise it directly.

    Args:
        logits: one member's logits on a batch, `(batch, sequence_length, vocab_size)`.
        labels: the next tokens, `(batch, sequence_length)` int32.

    Returns:
        A float32 scalar in [0, 1].
    """
    from keras import ops

    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.mean(ops.cast(ops.equal(predicted, ops.cast(labels, "int32")), "float32"))


def pretrain(model, x, y, seconds, learning_rate=PRETRAIN_LEARNING_RATE,
             batch_size=PRETRAIN_BATCH_SIZE, verbose=0):
    """Trains `model` with `fit()` (Adam, sparse cross-entropy on logits) on `(x, y)`
    until `seconds` of wall time have passed, stopped by a Keras callback.

    The clock starts when `fit()` is called (its tracing counts) and is checked after
    every batch, so training stops within one batch of the budget; the number of
    batches trained depends on the machine's speed and load. Afterwards the model is
    compiled again with the loss alone (no optimizer state is saved with it).

    Args:
        model: a built Keras language model returning logits.
        x, y: training token ids and their next tokens, `(n, sequence_length)`.
        seconds: the wall-time budget of `fit()`, positive.
        learning_rate: Adam's learning rate.
        batch_size: sequences per gradient step.
        verbose: `fit()`'s verbosity.

    Returns:
        `{"fit_seconds", "batches", "epochs", "train_loss"}` (`train_loss`: the mean
        training loss of the last epoch, partial or not).
    """
    import keras

    from keras_lrne.commands.fit_baseline import deadline_callback

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    stop = deadline_callback()
    start = time.perf_counter()
    stop.deadline = start + float(seconds)
    history = model.fit(x, y, batch_size=batch_size, epochs=10**9, verbose=verbose,
                        callbacks=[stop])
    fit_seconds = time.perf_counter() - start
    model.compile(loss=loss)  # drop the optimizer: evolution needs none
    return {"fit_seconds": round(fit_seconds, 2), "batches": int(stop.batches),
            "epochs": len(history.epoch), "train_loss": float(history.history["loss"][-1])}


def enable_lora(model, rank):
    """Calls `enable_lora(rank)` on every Keras `Dense` and `EinsumDense` layer of
    `model` (for the LM presets: the attention's query, key, value and output
    projections and the feed-forward layers).

    After this, `keras_lrne.evolve(model, ...)` evolves only the adapters' factors
    (`lora_kernel_a`, `lora_kernel_b`); every other weight is frozen and shared.

    Args:
        model: a built Keras model.
        rank: the adapters' rank, a positive integer.

    Returns:
        The paths of the adapted layers, in the order Keras walks the model.

    Raises:
        ValueError: when the model has no `Dense` or `EinsumDense` layer (keras-lrne's
            factorized layers have no Keras LoRA).
    """
    import keras

    adapted = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            layer.enable_lora(int(rank))
            adapted.append(layer.path)
    if not adapted:
        raise ValueError(
            "Received a model without Keras Dense or EinsumDense layers, so it has nothing "
            "to put LoRA adapters on (keras-lrne's factorized layers have no Keras LoRA). "
            f"Received: model {model.name!r}")
    return adapted


def held_out(model, x, y, batch_size=64):
    """The greedy next-token accuracy and the mean cross-entropy (nats per token) of
    `model` on `(x, y)`.

    Calls the model directly, batch by batch: Keras caches `predict()`'s compiled
    function, and one traced before `enable_lora` would not see the adapters.

    Returns:
        `{"accuracy": float, "loss": float}`.
    """
    import keras
    import numpy as np

    correct, nll, count = 0, 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = keras.ops.convert_to_numpy(
            model(x[start:start + batch_size], training=False)).astype("float64")
        targets = np.asarray(y[start:start + batch_size])
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        nll -= float(np.take_along_axis(log_p, targets[..., None], axis=-1).sum())
        correct += int((logits.argmax(axis=-1) == targets).sum())
        count += targets.size
    return {"accuracy": correct / count, "loss": nll / count}


def evolvable_count(model):
    """How many numbers the adapters hold (the LoRA factors' sizes summed)."""
    import math

    from keras_lrne.genome import is_lora_variable

    return int(sum(math.prod(v.shape) for v in model.trainable_variables
                   if is_lora_variable(v)))


def task_record(task):
    """The `LanguageModeling` task's settings for `summary.json`: its configuration with
    `vocab_size` the run's real vocabulary size (the model's output size; a text
    tokenizer keeps at most the size asked for), and the size asked for as
    `requested_vocab_size`."""
    return {**task.get_config(), "vocab_size": int(task.vocab_size),
            "requested_vocab_size": int(task.requested_vocab_size)}


# -- `keras-lrne lm --lora` ----------------------------------------------------------------
def _pretraining_settings(args):
    settings = run_directory.run_settings(args)
    return json.loads(json.dumps({k: settings.get(k) for k in PRETRAINING_SETTINGS},
                                 default=str))


def _load_pretrained(model, output, args):
    """Loads the run's pretrained weights into `model` (refusing other settings);
    returns the stored pretraining info, or None when `output` holds none."""
    weights = os.path.join(output, PRETRAINED_WEIGHTS)
    info_path = os.path.join(output, PRETRAINED_INFO)
    if not (os.path.isfile(weights) and os.path.isfile(info_path)):
        return None
    with open(info_path) as f:
        info = json.load(f)
    before, now = info.get("settings", {}), _pretraining_settings(args)
    changed = sorted(k for k in now if k in before and before[k] != now[k])
    if changed:
        details = ", ".join(f"{k}: {before[k]!r} then, {now[k]!r} now" for k in changed)
        raise ValueError(
            f"--resume: the pretrained weights in {weights!r} were made with other "
            f"settings ({details}). Pass --overwrite to start again, or choose another "
            "--output.")
    model.load_weights(weights)
    return info


def _save_pretrained(model, output, args, stats):
    """Writes the pretrained weights, then the info file that marks them complete."""
    from keras_lrne import checkpoint

    path = os.path.join(output, PRETRAINED_WEIGHTS)
    # Keras wants the name to end in `.weights.h5`: write beside it, then rename.
    tmp = os.path.join(output, f".pretrained.tmp-{os.getpid()}.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)
    info = {"pretraining": stats, "settings": _pretraining_settings(args)}
    checkpoint.atomic_write(os.path.join(output, PRETRAINED_INFO),
                            json.dumps(info, indent=2, default=str))
    return info


def run_lora(args, task, make_pretraining_task, make_model, output):
    """One `keras-lrne lm --lora` run into `output`: `(summary, history dict)`.

    Pretrains the model with `fit()` for `args.pretrain_seconds` on every training
    window of the corpus (from `make_pretraining_task()`), saves the weights as
    `output/pretrained.weights.h5` (with `pretrained.json`), enables LoRA of rank
    `args.lora`, and evolves the adapters on `next_token_accuracy` over `task`'s fixed
    training sample. A resumed run (`--resume`, the weights present) loads the weights
    and does not pretrain again; a backup without them is refused. The summary holds
    the held-out accuracy and loss before and after evolution.

    Args:
        args: the `lm` command's arguments.
        task: the `LanguageModeling` task: its fixed sample is the fitness data, its
            validation sequences the held-out slice.
        make_pretraining_task: returns the task whose sample is every training window.
        make_model: `make_model(args, task, variant)`, the initialised model.
        output: the run's directory.
    """
    import keras

    from keras_lrne.commands.builders import make_strategy
    from keras_lrne.tasks import Fitness

    variant = args.variant
    label = f"{variant} lora"
    run_directory.make_output_dir(output)
    with run_directory.lock(output):
        mode = run_directory.prepare_output(args, output)
        if mode == "finished":
            return run_directory.load_finished(output, label, args)
        model = make_model(args, task, variant)
        info = _load_pretrained(model, output, args) if args.resume else None
        if info is not None:
            print(f"[keras-lrne] {label}: loaded the pretrained weights from "
                  f"{os.path.join(output, PRETRAINED_WEIGHTS)!r} (pretraining skipped)",
                  flush=True)
        elif mode == "resume":
            raise ValueError(
                f"--resume: the backup in {os.path.join(output, 'backup')!r} continues "
                f"from pretrained weights, but {PRETRAINED_WEIGHTS} or {PRETRAINED_INFO} "
                f"is missing from {output!r}. Pass --overwrite to start again.")
        else:
            pool = make_pretraining_task()
            x_pre, y_pre = pool.train_data(0)
            print(f"[keras-lrne] {label}: fit() with Adam(learning_rate="
                  f"{PRETRAIN_LEARNING_RATE}) for {args.pretrain_seconds:g} s on "
                  f"{len(x_pre):,} training sequences", flush=True)
            stats = pretrain(model, x_pre, y_pre, args.pretrain_seconds)
            info = _save_pretrained(model, output, args, stats)
            print(f"[keras-lrne] {label}: pretrained {stats['batches']} batches in "
                  f"{stats['fit_seconds']:.1f} s (train loss {stats['train_loss']:.3f}); "
                  f"saved {PRETRAINED_WEIGHTS}", flush=True)
        # As pretrain() leaves it, so a resumed run has the same signature (its loss).
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x_fit, y_fit = task.train_data(0)
        validation = task.validation_data()
        if validation is None:
            raise ValueError("--lora reports held-out accuracy, but the task holds out no "
                             "validation sequences (validation_split=0).")
        before = held_out(model, *validation)
        train_before = held_out(model, x_fit, y_fit)
        adapted = enable_lora(model, args.lora)
        strategy = make_strategy(args)
        fitness = Fitness(next_token_accuracy, data=(x_fit, y_fit))
        baselines = task.baselines()
        lora_parameters = evolvable_count(model)
        print(f"[keras-lrne] {label}: LoRA rank {args.lora} on {len(adapted)} layers "
              f"({lora_parameters:,} evolvable numbers of {int(model.count_params()):,}), "
              f"{strategy}; held-out accuracy {before['accuracy']:.4f}, loss "
              f"{before['loss']:.4f} before evolution", flush=True)

        def summary_of(logs, generations, wall):
            after = held_out(model, *validation)
            train_after = held_out(model, x_fit, y_fit)
            summary = {
                "variant": variant, "lora_rank": args.lora, "lora_layers": len(adapted),
                "lora_parameters": lora_parameters,
                "parameters": int(model.count_params()), "generations": generations,
                "pretrain_seconds": args.pretrain_seconds,
                "pretrain_fit_seconds": info["pretraining"]["fit_seconds"],
                "pretrain_batches": info["pretraining"]["batches"],
                "pretrain_epochs": info["pretraining"]["epochs"],
                "pretrain_train_loss": info["pretraining"]["train_loss"],
                "fitness_sequences": len(x_fit),
                "heldout_sequences": len(validation[0]),
                "train_accuracy_before": train_before["accuracy"],
                "train_accuracy_after": train_after["accuracy"],
                "heldout_accuracy_before": before["accuracy"],
                "heldout_accuracy_after": after["accuracy"],
                "heldout_loss_before": before["loss"],
                "heldout_loss_after": after["loss"],
                "first_fitness": logs["fitness"][0], "final_fitness": logs["fitness"][-1],
                "wall_seconds": wall,
                "evolution_seconds": float(sum(logs.get("generation_seconds", []))),
                "vocab_size": int(task.vocab_size),
                **baselines,
            }
            return summary, {"task": task_record(task), "strategy": strategy.get_config(),
                             "lora_layers": adapted}

        extra = []
        if task.vectorizer is not None:
            from keras_lrne.generation import TOKENIZER_FILE, save_tokenizer

            extra.append((TOKENIZER_FILE, lambda path: save_tokenizer(task, path)))
        plot = ("accuracy.png", f"keras-lrne lm --lora {args.lora} ({variant})",
                {"keys": ("fitness", "mean_fitness"),
                 "ylabel": "next-token accuracy on the fitness sequences"})
        summary, history = run_directory.evolve_and_save(
            args, model, fitness, strategy, output, mode=mode, plot=plot,
            summary_of=summary_of, extra_outputs=extra)
    print(f"[keras-lrne] {label}: held-out accuracy {summary['heldout_accuracy_before']:.4f}"
          f" -> {summary['heldout_accuracy_after']:.4f}, held-out loss "
          f"{summary['heldout_loss_before']:.4f} -> {summary['heldout_loss_after']:.4f} "
          f"(training-sample accuracy {summary['train_accuracy_before']:.4f} -> "
          f"{summary['train_accuracy_after']:.4f}) in {summary['generations']} generations "
          f"({summary['wall_seconds']:.1f} s); wrote {output}", flush=True)
    return summary, history.history
