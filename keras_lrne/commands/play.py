"""`keras-lrne play`: run an exported policy and print its episode returns."""

import numpy as np

from keras_lrne.commands.arguments import positive_int, seed

NAME = "play"


def add_parser(commands, formatter_class):
    """Adds `play` to the `commands` subparsers."""
    parser = commands.add_parser(
        NAME, help="run an exported policy and print its episode returns",
        formatter_class=formatter_class,
        description="Load a policy exported by keras_lrne.export_policy (or a run's output "
        "directory, which holds one in policy/), play episodes and print the returns.",
    )
    parser.add_argument("dir", metavar="DIR", help="policy directory or a run's --output")
    parser.add_argument("--env", default=None,
                        help="environment id (default: the one the policy was evolved on; "
                        "Atari policies take a game name or an ALE id)")
    parser.add_argument("--episodes", type=positive_int, default=1,
                        help="episodes to play")
    parser.add_argument("--max-episode-steps", type=positive_int, default=None,
                        help="step cap (default: the run's)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="reset seed of the first episode (episode i uses seed + i)")
    parser.add_argument("--record", default=None, metavar="OUT.gif",
                        help="write a GIF of the first episode")
    return parser


def run(args, argv=()):
    """Runs `keras-lrne play`; returns the exit status."""
    from keras_lrne.playback import RecordError, play

    try:
        returns = play(args.dir, args.env, episodes=args.episodes, seed=args.seed,
                       max_episode_steps=args.max_episode_steps, record=args.record)
    except RecordError as error:
        raise ValueError(str(error)) from None
    for i, value in enumerate(returns):
        print(f"episode {i + 1}: return {value:.2f}", flush=True)
    print(f"mean return over {len(returns)} episode(s): {float(np.mean(returns)):.2f}")
    if args.record:
        print(f"[keras-lrne] wrote {args.record}")
    return 0
