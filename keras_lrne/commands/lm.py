"""`keras-lrne lm`: evolve the paper's transformer language model.

With no arguments it runs offline on the embedded corpus (Python's pydoc topics) at a
CPU-sized scale; `--paper` selects the paper's population and data sizes; `--compare`
runs the variants side by side, optionally with a `fit()` baseline (`--with-fit`);
`--lora RANK` fine-tunes instead: the model is pretrained by `fit()`, then only its Keras
LoRA adapters are evolved on next-token accuracy (`keras_lrne.commands.lora`).
"""

import argparse
import os

import numpy as np

from keras_lrne.commands import arguments, compare, fit_baseline, lora, run_directory
from keras_lrne.commands.arguments import VARIANTS, positive_float, positive_int
from keras_lrne.commands.builders import make_strategy

NAME = "lm"
HELP = "evolve the paper's transformer language model"

# The paper's LM settings (docs/design.md), selected with `--paper`.
PAPER_SETTINGS = {
    "population": 512,
    "parents": 16,
    "generations": 300,
    "sequence_length": 128,
    "num_sequences": 1024,
    "tokenizer": "word",
}

# What `--lora` changes where the command line leaves it out: a CPU-sized fine-tuning
# run (about 3 minutes on 2 cores with the default 60 s of pretraining).
LORA_SETTINGS = {
    "variant": "full",
    "population": 16,
    "generations": 80,
    "num_sequences": 128,
    "mutation_rate": 0.005,
    "sigma": 0.01,
    "learning_rate": 0.001,
}
#: The default of `--pretrain-seconds`.
PRETRAIN_SECONDS = 60.0


def add_arguments(lm):
    """The options of `keras-lrne lm`."""
    lm.add_argument("--variant", choices=VARIANTS, default="factorized",
                    help="factorized (low-rank), full (same shape, unfactorized) or small "
                    "(narrow unfactorized baseline). Default: factorized")
    lm.add_argument("--rank", type=positive_int, default=4,
                    help="rank of the attention and feed-forward factors (paper: 4 or 1)")
    lm.add_argument("--embed-rank", type=positive_int, default=32,
                    help="rank of the token-embedding factors (paper: 32 or 4)")
    lm.add_argument("--init", choices=("paper", "scaled"), default="paper",
                    help="paper: the paper's initialisation (token embedding N(0, 1)); "
                    "scaled (not the paper's): embedding std 1/sqrt(width), so the tied "
                    "head starts at unit-scale logits and the loss falls faster")
    lm.add_argument("--population", type=positive_int, default=32,
                    help="population size (paper: 512). Default: 32")
    lm.add_argument("--parents", type=positive_int, default=4,
                    help="truncation size, survivors per generation (paper: 16). Default: 4")
    lm.add_argument("--generations", type=positive_int, default=500,
                    help="generations (paper: 300). Default: 500")
    lm.add_argument("--mutation-rate", type=positive_float, default=0.01,
                    help="relative mutation std of full tensors (factors use its square "
                    "root). Default: 0.01")
    lm.add_argument("--factor-mutation-rate", type=positive_float, default=None,
                    help="relative mutation std of factor tensors (U and V). Default: the "
                    "square root of --mutation-rate (0.1 for 0.01), as in the paper")
    arguments.add_strategy_arguments(lm)
    lm.add_argument("--dataset", default=None,
                    help="a TensorFlow Datasets name with a text feature (tiny_shakespeare, "
                    "lm1b, ...). Default: the embedded offline corpus")
    lm.add_argument("--text-file", default=None,
                    help="a local UTF-8 text file, read as plain text (line breaks kept; "
                    "see --one-document-per-line)")
    lm.add_argument("--one-document-per-line", action="store_true",
                    help="with --text-file: every non-blank line is one document, line "
                    "breaks dropped (e.g. TinyStories, one story per line)")
    lm.add_argument("--max-documents", type=positive_int, default=None,
                    help="use only the first N documents (the paper used 1024 stories)")
    lm.add_argument("--tokenizer", choices=("word", "character"), default="character",
                    help="character tokens, or word tokens (lower-cased words and "
                    "punctuation; closest to the paper's 2048-token BPE, --paper uses them)")
    lm.add_argument("--vocab-size", type=positive_int, default=2048,
                    help="vocabulary size of the tokenizer (paper: 2048). Default: 2048")
    lm.add_argument("--sequence-length", type=positive_int, default=64,
                    help="tokens per sequence (paper: 128). Default: 64")
    lm.add_argument("--num-sequences", type=positive_int, default=32,
                    help="sequences every member is evaluated on (paper: 1024). Default: 32")
    lm.add_argument("--fresh-batch", action="store_true",
                    help="draw new sequences every generation instead of a fixed sample")
    lm.add_argument("--paper", action="store_true",
                    help="use the paper's sizes: population 512, parents 16, 300 "
                    "generations, 1024 sequences of 128 word tokens (needs a GPU)")
    lm.add_argument("--population-batch-size", type=positive_int, default=None,
                    help="members per vectorised call (automatic by default)")
    arguments.add_compare_arguments(lm)
    lm.add_argument("--with-fit", action="store_true",
                    help="with --compare: also train each compared model by gradients "
                    "(keras fit() with Adam) for the wall time its evolved run took, on "
                    "the same sequences, as a row `<variant>_fit`")
    lm.add_argument("--lora", type=positive_int, default=None, metavar="RANK",
                    help="fine-tune instead of evolving from scratch: train the model with "
                    "fit() (Adam) for --pretrain-seconds on every training sequence, save "
                    "it as OUTPUT/pretrained.weights.h5, enable Keras LoRA adapters of rank "
                    "RANK on its Dense and EinsumDense layers (attention Q/K/V/O and "
                    "feed-forward) and evolve only the adapters, base weights frozen, on "
                    "the exact-match accuracy of the greedy next token over the "
                    "--num-sequences training sequences; summary.json gets the held-out "
                    "accuracy and loss before and after. Needs --variant full or small "
                    "(the factorized layers have no Keras LoRA). Unless given: --variant "
                    "full, --population 16, --generations 80, --num-sequences 128, "
                    "--mutation-rate 0.005, --sigma 0.01, --learning-rate 0.001. --resume "
                    "loads the pretrained weights and does not train again. Default: off")
    lm.add_argument("--pretrain-seconds", type=positive_float, default=None, metavar="S",
                    help="with --lora: seconds of fit() before the adapters evolve (wall "
                    "time, so the number of batches depends on the machine). Default: "
                    f"{PRETRAIN_SECONDS:g}")
    lm.add_argument("--fit-learning-rate", type=positive_float, default=0.001,
                    help="Adam's learning rate for --with-fit (Keras' default). Default: "
                    "0.001")
    arguments.add_run_arguments(lm, NAME, output_help="output directory. Default: "
                                + os.path.join("lrne_output", NAME))


def add_parser(commands, formatter_class):
    """Adds `lm` to the `commands` subparsers."""
    parser = commands.add_parser(
        NAME, help=HELP, formatter_class=formatter_class,
        description="Evolve the paper's 3-block transformer LM (Garbus & Pollack, 2025). "
        "With no arguments it runs offline on the embedded corpus (Python's pydoc topics) "
        "at a CPU-sized scale; --paper selects the paper's population and data sizes.",
    )
    add_arguments(parser)
    return parser


def apply_paper_settings(args, argv):
    """With `--paper`, the paper's sizes for every option the command line leaves out."""
    if not args.paper:
        return
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for key, value in PAPER_SETTINGS.items():
        if f"--{key.replace('_', '-')}" not in given:
            setattr(args, key, value)


def apply_lora_settings(args, argv):
    """Checks the options of a `--lora` run and fills `LORA_SETTINGS` for every option the
    command line leaves out; without `--lora`, refuses `--pretrain-seconds`."""
    if args.lora is None:
        if args.pretrain_seconds is not None:
            raise ValueError("--pretrain-seconds sets the pretraining of a fine-tuning run: "
                             "pass --lora RANK too. Received: --pretrain-seconds "
                             f"{args.pretrain_seconds:g} without --lora")
        return
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for option in ("--compare", "--seeds", "--with-fit", "--paper", "--fresh-batch"):
        if option in given:
            why = {"--paper": "the paper's sizes are for evolution from scratch",
                   "--fresh-batch": "the fitness is scored on a fixed sample of training "
                   "sequences"}.get(option, "it runs one fine-tuning run")
            raise ValueError(f"--lora cannot be combined with {option}: {why}. Received: "
                             f"--lora {args.lora} with {option}")
    if "--variant" in given and args.variant == "factorized":
        raise ValueError(
            "--lora puts Keras LoRA adapters on Dense and EinsumDense layers; the factorized "
            "variant is made of keras-lrne's FactorizedDense and FactorizedAttention, which "
            "have no Keras LoRA. Use --variant full (the default with --lora) or small. "
            f"Received: --lora {args.lora} with --variant factorized")
    for key, value in LORA_SETTINGS.items():
        if f"--{key.replace('_', '-')}" not in given:
            setattr(args, key, value)
    if args.pretrain_seconds is None:
        args.pretrain_seconds = PRETRAIN_SECONDS


def make_task(args):
    """The `LanguageModeling` task the arguments describe."""
    from keras_lrne.tasks import LanguageModeling

    return LanguageModeling(
        args.dataset,
        text_file=args.text_file,
        one_document_per_line=args.one_document_per_line,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        sequence_length=args.sequence_length,
        num_sequences=args.num_sequences,
        fresh_batch=args.fresh_batch,
        max_documents=args.max_documents,
        seed=args.seed,
    )


def make_model(args, task, variant):
    """The LM preset `variant` for `task`, initialised from `args.seed`."""
    import keras

    import keras_lrne

    keras.utils.set_random_seed(args.seed)
    return keras_lrne.presets.language_model(
        variant,
        vocab_size=task.vocab_size,
        sequence_length=args.sequence_length,
        rank=args.rank,
        embed_rank=args.embed_rank,
        init=args.init,
    )


def baseline_lines(baselines):
    """The uniform and unigram losses as reference lines of a plot."""
    return {"uniform (ln V)": baselines["uniform_loss"],
            "unigram": baselines["unigram_loss"]}


def judge(summary):
    """Where a run's final losses stand against the uniform and unigram baselines."""
    parts = []
    for key in ("final_loss", "final_val_loss"):
        value = summary.get(key)
        if value is None:
            continue
        rel = []
        for name, base in (("uniform", summary["uniform_loss"]),
                           ("unigram", summary["unigram_loss"])):
            word = "below" if value < base else "above"
            rel.append(f"{abs(value - base):.2f} {word} {name}")
        parts.append(f"{key} {value:.3f} ({', '.join(rel)})")
    return (f"{'; '.join(parts)}; baselines: uniform ln V = {summary['uniform_loss']:.3f}, "
            f"unigram = {summary['unigram_loss']:.3f} nats per token")


def run_variant(args, task, variant, output):
    """One evolved LM run of `variant` into `output`: `(summary, history dict)`."""
    import keras

    run_directory.make_output_dir(output)
    with run_directory.lock(output):
        mode = run_directory.prepare_output(args, output)
        if mode == "finished":
            return run_directory.load_finished(output, variant, args)
        model = make_model(args, task, variant)
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        strategy = make_strategy(args)
        params = int(model.count_params())
        baselines = task.baselines()
        print(f"[keras-lrne] {variant}: {params:,} parameters, {strategy}", flush=True)

        def summary_of(logs, generations, wall):
            summary = {
                "variant": variant,
                "parameters": params,
                "generations": generations,
                "first_loss": logs["loss"][0],
                "final_loss": logs["loss"][-1],
                "final_val_loss": logs["val_loss"][-1] if "val_loss" in logs else None,
                "wall_seconds": wall,
                "evolution_seconds": float(sum(logs.get("generation_seconds", []))),
                "member_tokens_per_second": float(np.median(logs["member_tokens_per_second"])),
                "member_tokens_per_generation": (strategy.num_members * task.num_sequences
                                                 * args.sequence_length),
                "vocab_size": int(task.vocab_size),
                **baselines,
            }
            return summary, {"task": lora.task_record(task), "strategy": strategy.get_config()}

        extra = []
        if task.vectorizer is not None:
            from keras_lrne.generation import TOKENIZER_FILE, save_tokenizer

            extra.append((TOKENIZER_FILE, lambda path: save_tokenizer(task, path)))
        plot = ("loss.png", f"keras-lrne lm ({variant})",
                {"baselines": baseline_lines(baselines)})
        summary, history = run_directory.evolve_and_save(
            args, model, task, strategy, output, mode=mode, plot=plot,
            summary_of=summary_of, extra_outputs=extra)
    print(
        f"[keras-lrne] {variant}: loss {summary['first_loss']:.3f} -> "
        f"{summary['final_loss']:.3f} in {summary['generations']} generations "
        f"({summary['wall_seconds']:.1f} s); wrote {output}",
        flush=True,
    )
    print(f"[keras-lrne] {variant}: {judge(summary)}", flush=True)
    return summary, history.history


def run(args, argv):
    """Runs `keras-lrne lm` (one run, or a comparison); returns the exit status."""
    apply_lora_settings(args, argv)
    apply_paper_settings(args, argv)
    if args.lora is not None:
        task = make_task(args)
        print(f"[keras-lrne] data: {task!r}", flush=True)

        def pretraining_task():  # every training window of the same corpus and seed
            return make_task(argparse.Namespace(
                **{**vars(args), "num_sequences": task.num_train_windows}))

        lora.run_lora(args, task, pretraining_task, make_model, args.output)
        return 0
    if args.with_fit and args.compare is None and args.seeds is None:
        raise ValueError("--with-fit adds rows to a comparison: pass --compare (or --seeds) "
                         "too. Received: --with-fit without --compare")
    plan = compare.comparison_plan(args)
    if plan is None:
        task = make_task(args)
        print(f"[keras-lrne] data: {task!r}", flush=True)
        run_variant(args, task, args.variant, args.output)
        return 0
    tasks = {}  # one task per seed, shared by the variants (and the fit() runs)

    def run_one(run_args):
        if run_args.seed not in tasks:
            tasks[run_args.seed] = make_task(run_args)
            print(f"[keras-lrne] data (seed {run_args.seed}): {tasks[run_args.seed]!r}",
                  flush=True)
        return run_variant(run_args, tasks[run_args.seed], run_args.variant,
                           run_args.output)

    def fit(run_args, output, budget):
        return fit_baseline.run_fit(run_args, tasks[run_args.seed], output, budget,
                                    make_model)

    return compare.run_comparison(args, argv, plan, run_one, fit=fit)
