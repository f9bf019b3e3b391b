"""`--compare` and `--seeds`: several runs of one command side by side, then a report.

Every run of one seed gets the same data, episode seeds and budget. Runs go to
`OUTPUT/LABEL/` (or `OUTPUT/LABEL/seed_S/` with `--seeds`), seed by seed, in this
process. Finished runs are reused with `--resume` after checking their settings, an
interrupted one continues from its backup, so an interrupted comparison continues where
it stopped. The report (`keras_lrne.commands.report`) reads every number back from the
runs' files.
"""

import argparse
import os

from keras_lrne.commands import report, run_directory
from keras_lrne.commands.arguments import VARIANTS
from keras_lrne.commands.builders import make_strategy
from keras_lrne.commands.fit_baseline import FIT_SETTINGS


def comparison_plan(args):
    """`[(label, overrides)]` of the comparison the arguments ask for; None for one run."""
    if args.compare is None:
        return None if args.seeds is None else [(args.variant, {})]
    if args.compare == "variants":
        return [(variant, {"variant": variant}) for variant in VARIANTS]
    if args.compare == "ranks":
        return ([(f"rank_{rank}", {"variant": "factorized", "rank": rank})
                 for rank in args.ranks] + [("full", {"variant": "full"})])
    if args.compare in ("init", "size-matched") and args.command != "lm":
        raise ValueError(f"`--compare {args.compare}` is an ablation of the language "
                         f"model (keras-lrne lm). Received: keras-lrne {args.command} "
                         f"--compare {args.compare}")
    if args.compare == "mutation-rates":
        return ([(f"full_mr_{rate:g}", {"variant": "full", "mutation_rate": rate})
                 for rate in args.rates]
                + [(f"factorized_fr_{rate:g}", {"variant": "factorized",
                                                "factor_mutation_rate": rate})
                   for rate in args.factor_rates])
    if args.compare == "init":
        return [(f"{variant}_{init}", {"variant": variant, "init": init})
                for variant in ("full", "factorized") for init in ("paper", "scaled")]
    if args.compare == "size-matched":
        return [("factorized_r1_e4", {"variant": "factorized", "rank": 1, "embed_rank": 4}),
                ("small", {"variant": "small"})]
    return [(name.replace(":", "_"), {"strategy": name}) for name in args.strategies]


def run_output(args, label, seed):
    """A comparison run's directory: OUTPUT/label, or OUTPUT/label/seed_S with --seeds."""
    if args.seeds is None:
        return os.path.join(args.output, label)
    return os.path.join(args.output, label, f"seed_{seed}")


def held_out(args, output):
    """The held-out evaluation of a finished environment run's elite
    (`keras_lrne.playback.evaluate`, seed 0; reused from its `evaluation.json` when that
    holds as many episodes): `{"heldout_return": ..., "heldout_hns": ...}`, or `{}` for
    the LM or `--eval-episodes 0`."""
    import json

    episodes = getattr(args, "eval_episodes", None)
    if args.command == "lm" or episodes == 0:
        return {}
    from keras_lrne.playback import EVALUATION_EPISODES, EVALUATION_FILE, evaluate

    kind = {"atari": "atari", "carracing": "carracing"}.get(args.command, "gym")
    episodes = EVALUATION_EPISODES[kind] if episodes is None else episodes
    path = os.path.join(output, EVALUATION_FILE)
    result = None
    if os.path.isfile(path):
        with open(path) as f:
            result = json.load(f)
        if result.get("episodes") != episodes or result.get("seed") != 0:
            result = None
    if result is None:
        print(f"[keras-lrne] held-out evaluation of {output}: {episodes} episodes",
              flush=True)
        result = evaluate(output, episodes=episodes, seed=0)
    print(f"[keras-lrne] {output}: held-out return {result['mean_return']:.1f} ± "
          f"{result['ci95_half_width']:.1f} (95% CI) over {result['episodes']} episodes",
          flush=True)
    row = {"heldout_return": result["mean_return"]}
    if "human_normalized_score" in result:
        row["heldout_hns"] = result["human_normalized_score"]
    return row


def fit_label(args, label, run_args):
    """The label of a `--with-fit` row: `<label>_fit`; one `<variant>_fit` row per seed
    under `--compare strategies` (every strategy evolves the same model)."""
    return f"{run_args.variant}_fit" if args.compare == "strategies" else f"{label}_fit"


def comparison_runs(args, argv, plan):
    """`[(label, seed, run_args)]`, every run's arguments checked before any work."""
    seeds = args.seeds
    if seeds is None:
        seeds = (args.seed,)
    elif any(a == "--seed" or a.startswith("--seed=") for a in argv):
        raise ValueError("--seed and --seeds exclude each other: --seeds lists every seed "
                         f"of the comparison. Received: --seeds {','.join(map(str, seeds))}")
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    overridden = {"variants": ("--variant",), "ranks": ("--variant", "--rank"),
                  "strategies": ("--strategy",),
                  "mutation-rates": ("--variant", "--mutation-rate",
                                     "--factor-mutation-rate"),
                  "init": ("--variant", "--init"),
                  "size-matched": ("--variant", "--rank", "--embed-rank")}.get(args.compare, ())
    for option in overridden:
        if option in given:
            raise ValueError(f"`--compare {args.compare}` sets {option} itself for every "
                             f"run. Received: {option} with --compare {args.compare}")
    if "--ranks" in given and args.compare != "ranks":
        raise ValueError("--ranks lists the ranks of `--compare ranks`. Received: --ranks "
                         f"with --compare {args.compare or '(none)'}")
    if "--strategies" in given and args.compare != "strategies":
        raise ValueError("--strategies lists the strategies of `--compare strategies`. "
                         f"Received: --strategies with --compare {args.compare or '(none)'}")
    if args.compare == "strategies" and getattr(args, "reevaluate_top", None):
        others = ", ".join(name for name in args.strategies if name != "ga")
        raise ValueError("Two-stage selection (--reevaluate-top) needs a truncation-selection "
                         f"strategy such as the GA; `--compare strategies` also runs {others}. "
                         f"Received: --reevaluate-top {args.reevaluate_top}")
    runs = []
    for seed in seeds:
        for label, overrides in plan:
            run_args = argparse.Namespace(**{**vars(args), **overrides, "seed": seed})
            run_args.output = run_output(args, label, seed)
            try:
                make_strategy(run_args)  # e.g. OpenES needs an even population
                run_directory.check_ready(run_args, run_args.output)
                if getattr(args, "with_fit", False):
                    fit = argparse.Namespace(**vars(run_args))
                    fit.output = run_output(args, fit_label(args, label, run_args), seed)
                    run_directory.check_ready(fit, fit.output, also=FIT_SETTINGS)
            except ValueError as error:
                raise ValueError(f"{error} (in the comparison's run {label!r}, seed "
                                 f"{seed})") from None
            runs.append((label, seed, run_args))
    return runs


def run_comparison(args, argv, plan, run, fit=None):
    """Runs every label of `plan` on every seed (seed by seed), then writes the report.

    Args:
        args: The command's arguments.
        argv: The command line (quoted in the report; checked for refused options).
        plan: `comparison_plan(args)`.
        run: `run(run_args)` makes (or reuses) one run into `run_args.output` and
            returns `(summary, history dict)`.
        fit: With `--with-fit`, `fit(run_args, output, budget)` trains the run's model
            by gradients into `output` until it has processed `budget["member_tokens"]`
            tokens and trained `budget["seconds"]`, and returns `(summary, history
            dict)`; the report reads it at equal tokens (`*_fit`) and at equal wall time
            (`*_fit_time`).

    Returns:
        0, the command's exit status.
    """
    runs = comparison_runs(args, argv, plan)
    run_directory.make_output_dir(args.output)
    records, curves, summaries = [], {}, []
    for label, seed, run_args in runs:
        summary, _ = run(run_args)
        summaries.append(summary)
        row, curve = report.run_record(args.command, label, seed, run_args.output, summary)
        row.update(held_out(args, run_args.output))
        records.append(row)
        curves.setdefault(label, []).append(curve)
        if getattr(args, "with_fit", False) and (args.compare != "strategies"
                                                 or label == plan[0][0]):
            label_of_fit = fit_label(args, label, run_args)
            fit_output = run_output(args, label_of_fit, seed)
            fit_summary, _ = fit(run_args, fit_output,
                                 {"seconds": row["wall_seconds"],
                                  "member_tokens": row["member_tokens"]})
            for match, fit_label_ in (("tokens", label_of_fit),
                                      ("time", f"{label_of_fit}_time")):
                fit_row, fit_curve = report.run_record(args.command, fit_label_, seed,
                                                       fit_output, fit_summary, match=match)
                records.append(fit_row)
                curves.setdefault(fit_label_, []).append(fit_curve)
    text = report.write_report(args, argv, records, curves, summaries,
                               [run_args.output for _, _, run_args in runs])
    print(text, flush=True)
    return 0
