"""Recomputes the significance section of every published comparison from its CSV.

Each `docs/results/NAME/comparison.md` ends with the tests `keras-lrne ... --compare`
ran when it was written. This script reads the per-run rows back from the directory's
`comparison.csv` (`keras_lrne.comparison.read_table`), finds the comparison's kind in
the report's `Command:` line, and rewrites only the significance section with the
current tests (`keras_lrne.comparison.significance_section`: paired t-test and Wilcoxon
where seeds pair runs, Holm-adjusted over the report, detectable difference at 80%
power). Tables, notes and plots are left as they are, so reports written before the
tests changed carry today's statistics without re-running their experiments.

Usage (from the repository root; `--check` exits 1 if any report is out of date):

    python docs/results/recompute_statistics.py [--check] [DIR ...]
"""

import argparse
import glob
import os
import re
import sys

from keras_lrne.commands.report import tested_pairs
from keras_lrne.comparison import read_table, significance_section

HERE = os.path.dirname(os.path.abspath(__file__))

#: The tested columns and their headings, as `keras-lrne ... --compare` writes them.
METRICS = (("final_loss", "final loss"),
           ("final_episode_return", "final elite return (training episodes)"),
           ("heldout_return", "held-out return"),
           ("final_val_loss", "final val_loss"),
           ("best_val_loss", "best val_loss"))


def comparison_kind(text):
    """The `--compare` kind of a report's `Command:` line (None without --compare)."""
    command = re.search(r"^Command: `keras-lrne ([^`]*)`", text, re.MULTILINE)
    if command is None:
        raise ValueError("a comparison.md names its command on a line starting with "
                         "'Command: `keras-lrne'; none found")
    words = command.group(1).split()
    if "--compare" not in words:
        return None
    after = words[words.index("--compare") + 1:]
    return after[0] if after and not after[0].startswith("-") else "variants"


def updated_report(directory):
    """`(old, new)` text of `directory/comparison.md` with a recomputed significance
    section (the lines from `Significance` to the next empty line before the notes)."""
    with open(os.path.join(directory, "comparison.md")) as f:
        old = f.read()
    runs, columns = read_table(os.path.join(directory, "comparison.csv"))
    labels = list(dict.fromkeys(run["label"] for run in runs))
    metrics = [(column, heading) for column, heading in METRICS if column in columns
               and any(run[column] is not None for run in runs)]
    section = significance_section(runs, metrics, tested_pairs(comparison_kind(old),
                                                               labels))
    lines = old.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("Significance")),
                 None)
    if start is None:  # nothing tested before: the section goes before the notes
        if not section:  # and nothing to test (one variant over seeds)
            return old, old
        start = next(i for i, line in enumerate(lines) if line.startswith("Command:"))
        end = start
    else:
        end = start + 1
        while end < len(lines) and (lines[end] == "" or lines[end].startswith("- ")):
            end += 1
        start -= 1  # the empty line before the section
    new_lines = lines[:start] + section[:] + [""] + lines[end:]
    return old, "\n".join(new_lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directories", nargs="*",
                        help="result directories. Default: every docs/results/*/ with a "
                        "comparison.csv")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a report is out of date")
    args = parser.parse_args(argv)
    directories = args.directories or sorted(
        os.path.dirname(p) for p in glob.glob(os.path.join(HERE, "*", "comparison.csv")))
    stale = []
    for directory in directories:
        old, new = updated_report(directory)
        if old != new:
            stale.append(directory)
            if not args.check:
                with open(os.path.join(directory, "comparison.md"), "w") as f:
                    f.write(new)
        print(f"{'out of date' if old != new else 'up to date'}: {directory}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
