"""The 5-seed study of `examples/lora_finetune.py`: per-seed table and paired tests.

Reads every `seed_*/results.json` beside this file (one `examples/lora_finetune.py
--output` each) and writes `results.csv` (one row per model and seed), `results.md`
(the table and the significance section) and `results.json` (the same numbers).

The tests are `keras_lrne.comparison`'s, paired by seed (the three models of a seed
share its pretraining): the paired t-test and the Wilcoxon signed-rank test on the
held-out exact match, for the evolved model against the pretrained one and against
`fit()` continued for the same wall time, each test's p-values Holm-adjusted over those
two comparisons.

Usage (from the repository root; `--check` exits 1 if a written file is out of date):

    python docs/results/lora_finetune/report.py [--check]
"""

import argparse
import glob
import json
import os
import sys

from keras_lrne import comparison

HERE = os.path.dirname(os.path.abspath(__file__))
#: The models of a seed, as `results.json` names them, and their labels here.
MODELS = (("before", "pretrained"), ("after_evolution", "evolved"),
          ("after_fit", "fit_continued"), ("after_fit_low_lr", "fit_low_lr"))
#: The columns of `results.csv` (besides label and seed), all on the held-out problems.
COLUMNS = ("heldout_exact_match", "heldout_greedy_exact_match", "heldout_digit_accuracy",
           "heldout_answer_loss")
#: The comparisons of the family (Holm runs over these).
TESTS = (("evolved", "pretrained"), ("evolved", "fit_continued"), ("evolved", "fit_low_lr"))
METRIC = ("heldout_exact_match", "held-out exact match")
#: What differs between the seeds' runs besides the models' scores.
PER_SEED = ("seed", "pretrain_seconds", "evolution_seconds", "fit_steps", "fit_seconds",
            "fit_low_lr_steps", "fit_low_lr_seconds", "heldout_during", "first_fitness",
            "final_fitness", "wall_seconds")


def load_seeds(directory=HERE):
    """The `results.json` of every `seed_*` directory, in seed order."""
    seeds = []
    for path in glob.glob(os.path.join(directory, "seed_*", "results.json")):
        with open(path) as f:
            seeds.append(json.load(f))
    return sorted(seeds, key=lambda r: r["seed"])


def runs_of(seeds):
    """One row per model and seed: `label`, `seed` and `COLUMNS`."""
    runs = []
    for label_key, label in MODELS:
        for result in seeds:
            scores = result[label_key]
            runs.append({"label": label, "seed": result["seed"],
                         "heldout_exact_match": scores["exact_match"],
                         "heldout_greedy_exact_match": scores["greedy_exact_match"],
                         "heldout_digit_accuracy": scores["digit_accuracy"],
                         "heldout_answer_loss": scores["answer_loss"]})
    return runs


def summary_of(seeds):
    """The study as a dict: settings, per-seed numbers, per-model summaries and tests."""
    runs = runs_of(seeds)
    by_label = {label: [r[METRIC[0]] for r in runs if r["label"] == label]
                for _, label in MODELS}
    tests = [dict(a=a, b=b, **comparison.paired_significance(by_label[a], by_label[b]))
             for a, b in TESTS]
    for key in ("paired_p", "wilcoxon_p"):
        for test, adjusted in zip(tests, comparison.holm([t[key] for t in tests])):
            test[f"holm_{key}"] = adjusted
    settings = {k: v for k, v in seeds[0].items() if k not in PER_SEED
                and k not in dict(MODELS)}
    per_seed = [{k: r[k] for k in PER_SEED} | {label: r[key]["exact_match"]
                                               for key, label in MODELS} for r in seeds]
    return {"settings": settings, "per_seed": per_seed,
            "summaries": {label: comparison.summarize(values)
                          for label, values in by_label.items()},
            "tests": tests}


def markdown(seeds, runs, summary):
    lines = ["# LoRA fine-tuning by evolution: 3-digit addition, exact match", "",
             "Command (per seed): `python examples/lora_finetune.py --seed SEED --output "
             "docs/results/lora_finetune/seed_SEED` (all five: `sh "
             "docs/results/lora_finetune/run_study.sh`); this report: `python "
             "docs/results/lora_finetune/report.py`.", "",
             "Held-out exact match (2,000 problems; teacher-forced argmax of every answer "
             "digit, equal to greedy decoding's on every model) of the pretrained model, "
             "the evolved adapters, and fit() continued for the evolution's wall time at "
             "learning rate 0.003 (pretraining's) and 0.0003:", "",
             "| seed | pretrained | evolved | fit() continued | fit() at 0.0003 | evolution "
             "(s) | fit() steps (0.003 / 0.0003) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in seeds:
        lines.append(f"| {r['seed']} | " + " | ".join(
            f"{r[key]['exact_match']:.4f}" for key, _ in MODELS)
            + f" | {r['evolution_seconds']:.0f} | {r['fit_steps']} / "
            f"{r['fit_low_lr_steps']} |")
    means = summary["summaries"]
    lines.append("| mean (95% CI) | " + " | ".join(
        f"{means[label]['mean']:.4f} ({means[label]['ci_low']:.4f}, "
        f"{means[label]['ci_high']:.4f})" for _, label in MODELS) + " | | |")
    lines += ["", "Held-out exact match at every generation (evolution) or epoch end (fit(), "
              "every 250 steps) of each run, mean [min, max]; described, never used to "
              "pick a model:", "",
              "| seed | evolution | fit() continued | fit() at 0.0003 |", "|---|---|---|---|"]
    for r in seeds:
        during = r["heldout_during"]
        lines.append(f"| {r['seed']} | " + " | ".join(
            f"{during[k]['mean']:.4f} [{during[k]['min']:.4f}, {during[k]['max']:.4f}]"
            for k in ("evolution", "fit", "fit_low_lr")) + " |")
    lines += comparison.significance_section(runs, [METRIC], list(TESTS))
    return "\n".join(lines) + "\n"


def outputs(directory=HERE):
    """`{file name: text}` of what the report writes."""
    seeds = load_seeds(directory)
    if not seeds:
        raise ValueError(f"Received a directory without seed_*/results.json files. "
                         f"Received: directory={directory!r}")
    runs = runs_of(seeds)
    summary = summary_of(seeds)
    table = os.path.join(directory, ".results.tmp.csv")
    try:
        comparison.write_table(runs, table, list(COLUMNS))
        with open(table) as f:
            csv_text = f.read()
    finally:
        if os.path.exists(table):
            os.remove(table)
    return {"results.csv": csv_text, "results.md": markdown(seeds, runs, summary),
            "results.json": json.dumps(summary, indent=2) + "\n"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a written file differs from what would be written")
    args = parser.parse_args(argv)
    stale = []
    for name, text in outputs().items():
        path = os.path.join(HERE, name)
        if args.check:
            old = None
            if os.path.exists(path):
                with open(path) as f:
                    old = f.read()
            if old != text:
                stale.append(name)
        else:
            with open(path, "w") as f:
                f.write(text)
    if stale:
        print(f"out of date: {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
