"""The gradient baseline of `keras-lrne lm --compare --with-fit`: the compared model
trained by Keras' `fit()` with Adam until it has processed as many tokens as its evolved
run's member-tokens (compute-matched) and trained for as long as the evolved run took
(time-matched); the report reads it at both points (`*_fit` and `*_fit_time` rows)."""

import csv
import io
import math
import os
import time

from keras_lrne.commands import run_directory

#: How many times a `--with-fit` run is scored over its budget.
FIT_POINTS = 50
#: Keras' default batch size, what a user would start from.
FIT_BATCH_SIZE = 32
#: Settings a finished `--with-fit` run must share to be reused.
FIT_SETTINGS = ("fit_learning_rate",)


def deadline_callback():
    """A Keras callback that stops `fit()` once `time.perf_counter()` passes `.deadline`
    or `.batches` (batches trained, over every fit() call) reaches `.max_batches`."""
    import keras

    class Deadline(keras.callbacks.Callback):
        deadline = float("inf")
        max_batches = float("inf")
        batches = 0

        def _check(self):
            if time.perf_counter() >= self.deadline or self.batches >= self.max_batches:
                self.model.stop_training = True

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            self._check()

        def on_epoch_end(self, epoch, logs=None):
            self._check()

    return Deadline()


def run_fit(args, task, output, budget, make_model):
    """Trains the LM `args.variant` by gradients (Adam) until both budgets are spent:
    `budget["member_tokens"]` tokens processed and `budget["seconds"]` of `fit()`.

    The same model, initialisation and sequences as the evolved run; its loss is measured
    (outside the budget) about `FIT_POINTS` times per budget, and exactly when each
    budget is reached, on the sequences the evolved elite is scored on and on the
    validation sequences (with `--fresh-batch`, every stretch between two measurements
    trains on a new sample). Writes `history.csv`, `model.keras` (the model at the end
    of both budgets) and `summary.json` into `output`. An interrupted fit run starts
    again from the beginning.

    Args:
        args: The run's arguments.
        task: The `LanguageModeling` task of the run's seed.
        output: The fit run's directory.
        budget: `{"seconds": s, "member_tokens": t}` (a number: seconds only).
        make_model: `make_model(args, task, variant)` builds the initialised model.

    Returns:
        `(summary, history dict)`.
    """
    import keras

    from keras_lrne import checkpoint

    label = f"{args.variant}_fit"
    if not isinstance(budget, dict):
        budget = {"seconds": budget, "member_tokens": 0}
    budget_seconds, budget_tokens = float(budget["seconds"]), int(budget["member_tokens"])
    if not budget_seconds > 0:
        raise ValueError(
            f"--with-fit: the evolved run beside {output!r} logged no generation time "
            f"(generation_seconds), so it gives no budget for fit(). It was made by an "
            f"older keras-lrne: pass --overwrite to run it again. Received: budget={budget}")
    run_directory.make_output_dir(output)
    with run_directory.lock(output):
        if run_directory.prepare_output(args, output) == "finished":
            return run_directory.load_finished(output, label, args, also=FIT_SETTINGS)
        model = make_model(args, task, args.variant)
        model.compile(optimizer=keras.optimizers.Adam(args.fit_learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        validation = task.validation_data()
        print(f"[keras-lrne] {label}: fit() with Adam(learning_rate="
              f"{args.fit_learning_rate}) for {budget_tokens:,} tokens and {budget_seconds:.1f}"
              " s", flush=True)
        history, seconds, epoch, chunk = {}, 0.0, 0, 0
        stop = deadline_callback()
        time_step, token_step = budget_seconds / FIT_POINTS, budget_tokens / FIT_POINTS
        tokens = 0
        while seconds < budget_seconds or tokens < budget_tokens:
            # Fit in stretches of about 2% of each budget not yet spent (ending exactly
            # at each budget), scoring the model after each.
            x, y = task.train_data(chunk)
            tokens_per_batch = FIT_BATCH_SIZE * x.shape[1]
            start = time.perf_counter()
            stop.deadline = float("inf")
            if seconds < budget_seconds:
                stop.deadline = start + min(budget_seconds - seconds, time_step)
            stop.max_batches = float("inf")
            if tokens < budget_tokens:
                target = min(budget_tokens, tokens + max(token_step, 1))
                stop.max_batches = stop.batches + math.ceil((target - tokens) / tokens_per_batch)
            fit_history = model.fit(x, y, batch_size=FIT_BATCH_SIZE, epochs=10**9,
                                    verbose=0, callbacks=[stop])
            seconds += time.perf_counter() - start
            tokens = stop.batches * tokens_per_batch
            epoch += len(fit_history.epoch)
            chunk += 1
            logs = {"loss": float(model.evaluate(x, y, verbose=0)),
                    "elapsed_seconds": seconds, "epochs": epoch, "member_tokens": tokens}
            if validation is not None:
                logs["val_loss"] = float(model.evaluate(*validation, verbose=0))
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
        keys = sorted(history)
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["epoch", *keys])
        for i in range(chunk):
            writer.writerow([i, *(history[k][i] for k in keys)])
        checkpoint.atomic_write(os.path.join(output, "history.csv"), table.getvalue())
        with checkpoint.atomic_path(os.path.join(output, "model.keras")) as tmp:
            model.save(tmp)
        summary = {
            "variant": label, "parameters": int(model.count_params()), "epochs": epoch,
            "final_loss": history["loss"][-1],
            "final_val_loss": history["val_loss"][-1] if "val_loss" in history else None,
            "fit_seconds": seconds, "fit_member_tokens": tokens,
            "budget_seconds": budget_seconds, "budget_member_tokens": budget_tokens,
            **task.baselines(),
        }
        run_directory.write_summary(output, summary, args)
    print(f"[keras-lrne] {label}: loss {history['loss'][0]:.3f} -> {summary['final_loss']:.3f}"
          f" in {epoch} epochs ({seconds:.1f} s of fit()); wrote {output}", flush=True)
    return summary, history
