"""The commands of the `keras-lrne` command line, one module per command.

Each command module (`lm`, `atari`, `carracing`, `control`, `play`, `generate`) has
`NAME`, `add_parser(commands, formatter_class)` and `run(args, argv)`; `keras_lrne.cli`
only registers them and dispatches. What several commands share lives beside them:
argument types and option groups (`arguments`), the output directory, its lock and
its resume checks (`run_directory`), the strategy and devices (`builders`), side-by-side
comparisons (`compare`), their report (`report`) and the `fit()` baseline
(`fit_baseline`). Nothing here imports Keras at import time, so `keras-lrne --help`
answers at once.
"""
