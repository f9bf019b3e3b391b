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
          ("after_fit", "fit_continued"))
#: The columns of `results.csv` (besides label and seed), all on the held-out problems.
COLUMNS = ("heldout_exact_match", "heldout_greedy_exact_match", "heldout_digit_accuracy",
           "heldout_answer_loss")
#: The comparisons of the family (Holm runs over these).
TESTS = (("evolved", "pretrained"), ("evolved", "fit_continued"))
METRIC = ("heldout_exact_match", "held-out exact match")


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
    settings = {k: v for k, v in seeds[0].items() if k not in (
        "seed", "before", "after_evolution", "after_fit", "fit_steps", "pretrain_seconds",
        "evolution_seconds", "fit_seconds", "first_fitness", "final_fitness",
        "wall_seconds")}
    per_seed = [{k: r[k] for k in ("seed", "fit_steps", "pretrain_seconds",
                                   "evolution_seconds", "fit_seconds", "first_fitness",
                                   "final_fitness", "wall_seconds")}
                | {label: r[key]["exact_match"] for key, label in MODELS}
                for r in seeds]
    return {"settings": settings, "per_seed": per_seed,
            "summaries": {label: comparison.summarize(values)
                          for label, values in by_label.items()},
            "tests": tests}


def markdown(seeds, runs, summary):
    lines = ["# LoRA fine-tuning by evolution: 3-digit addition, exact match", "",
             "Command (per seed): `python examples/lora_finetune.py --seed SEED --output "
             "docs/results/lora_finetune/seed_SEED`; report: `python "
             "docs/results/lora_finetune/report.py`.", "",
             "Held-out exact match (teacher-forced argmax of every answer digit, equal to "
             "greedy decoding's: `greedy` columns) of the pretrained model, the evolved "
             "adapters and fit() continued for the evolution's wall time:", "",
             "| seed | pretrained | evolved | fit() continued | evolution (s) | fit() "
             "steps | generations | greedy: pretrained / evolved / fit |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in seeds:
        greedy = " / ".join(f"{r[k]['greedy_exact_match']:.4f}" for k, _ in MODELS)
        lines.append(f"| {r['seed']} | {r['before']['exact_match']:.4f} | "
                     f"{r['after_evolution']['exact_match']:.4f} | "
                     f"{r['after_fit']['exact_match']:.4f} | {r['evolution_seconds']:.0f} | "
                     f"{r['fit_steps']} | {r['generations']} | {greedy} |")
    means = summary["summaries"]
    lines.append("| mean (95% CI) | " + " | ".join(
        f"{means[label]['mean']:.4f} ({means[label]['ci_low']:.4f}, "
        f"{means[label]['ci_high']:.4f})" for _, label in MODELS) + " | | | | |")
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
