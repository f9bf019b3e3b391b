"""The gradient baseline of `keras-lrne lm --compare --with-fit`: the compared model
trained by Keras' `fit()` with Adam for the wall time its evolved run took."""

import csv
import io
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
    and counts the batches trained (`.batches`)."""
    import keras

    class Deadline(keras.callbacks.Callback):
        deadline = float("inf")
        batches = 0  # batches trained, over every fit() call

        def _check(self):
            if time.perf_counter() >= self.deadline:
                self.model.stop_training = True

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            self._check()

        def on_epoch_end(self, epoch, logs=None):
            self._check()

    return Deadline()


def run_fit(args, task, output, budget, make_model):
    """Trains the LM `args.variant` by gradients (Adam) for `budget` seconds of `fit()`.

    The same model, initialisation and sequences as the evolved run; after every epoch
    its loss is measured (outside the budget) about `FIT_POINTS` times, on the sequences
    the evolved elite is scored on and on the validation sequences (with `--fresh-batch`,
    every stretch between two measurements trains on a new sample). Writes
    `history.csv`, `model.keras` and `summary.json` into `output`. An interrupted fit
    run starts again from the beginning.

    Args:
        args: The run's arguments.
        task: The `LanguageModeling` task of the run's seed.
        output: The fit run's directory.
        budget: Seconds of `fit()`.
        make_model: `make_model(args, task, variant)` builds the initialised model.

    Returns:
        `(summary, history dict)`.
    """
    import keras

    from keras_lrne import checkpoint

    label = f"{args.variant}_fit"
    if not budget > 0:
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
              f"{args.fit_learning_rate}) for {budget:.1f} s", flush=True)
        history, seconds, epoch, chunk = {}, 0.0, 0, 0
        stop = deadline_callback()
        while seconds < budget:
            # Fit in stretches of about 2% of the budget, scoring the model after each.
            x, y = task.train_data(chunk)
            start = time.perf_counter()
            stop.deadline = start + min(budget - seconds, budget / FIT_POINTS)
            fit_history = model.fit(x, y, batch_size=FIT_BATCH_SIZE, epochs=10**9,
                                    verbose=0, callbacks=[stop])
            seconds += time.perf_counter() - start
            epoch += len(fit_history.epoch)
            chunk += 1
            logs = {"loss": float(model.evaluate(x, y, verbose=0)),
                    "elapsed_seconds": seconds, "epochs": epoch,
                    "member_tokens": stop.batches * FIT_BATCH_SIZE * x.shape[1]}
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
            "fit_seconds": seconds, "budget_seconds": budget, **task.baselines(),
        }
        run_directory.write_summary(output, summary, args)
    print(f"[keras-lrne] {label}: loss {history['loss'][0]:.3f} -> {summary['final_loss']:.3f}"
          f" in {epoch} epochs ({seconds:.1f} s of fit()); wrote {output}", flush=True)
    return summary, history
