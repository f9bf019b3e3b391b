"""`keras-lrne control`: evolve an MLP policy on a vector-observation gymnasium env."""

from keras_lrne.commands import environments

NAME = "control"
SPEC = {
    "help": "evolve an MLP policy on a vector-observation gymnasium env (MuJoCo, "
    "classic control; Box or Discrete actions)",
    "rank": 4, "population": 32, "parents": 4, "generations": 20, "episodes": 1,
    "max_episode_steps": None, "paper_rank": None, "paper_population": "-",
    "paper_parents": "-", "paper_generations": None,
}


def _env(parser):
    parser.add_argument("--env", default="HalfCheetah-v5",
                        help="a gymnasium id with vector observations and Box "
                        "(continuous) or Discrete actions: MuJoCo v5 (HalfCheetah-v5, "
                        "Hopper-v5, ...), classic control (CartPole-v1, Pendulum-v1, "
                        "Acrobot-v1, MountainCar-v0, ...), LunarLander-v3")


def add_parser(commands, formatter_class):
    """Adds `control` to the `commands` subparsers."""
    return environments.add_parser(commands, formatter_class, NAME, SPEC, first=_env)


def has_box_actions(env_id):
    """Whether the gymnasium environment `env_id` has a continuous (Box) action space."""
    from keras_lrne.tasks.environment import check_env_id, require_gymnasium

    gymnasium = require_gymnasium()
    check_env_id(env_id, "--env")
    env = gymnasium.make(env_id)
    try:
        return isinstance(env.action_space, gymnasium.spaces.Box)
    finally:
        env.close()


def make_task_and_model(args):
    """The task (`Control` for Box actions, squashed into their bounds; `Environment`
    for Discrete ones, argmax) and the MLP policy preset the arguments describe."""
    import keras_lrne

    tasks = keras_lrne.tasks
    task_class = tasks.Control if has_box_actions(args.env) else tasks.Environment
    task = task_class(args.env, episodes=args.episodes,
                      max_episode_steps=args.max_episode_steps,
                      normalize_observations=True)
    if len(task.input_shape) != 1:
        raise ValueError(
            f"Received an invalid value for `--env`: `control` takes environments with "
            f"vector observations, but {args.env!r} observes shape {task.input_shape}; "
            f"use `atari` or `carracing` (or the Python API with "
            f"`keras_lrne.tasks.Environment`) for images. Received: --env={args.env!r}"
        )
    model = keras_lrne.presets.control_policy(args.variant, input_dim=task.input_shape[0],
                                              num_actions=task.num_outputs, rank=args.rank)
    return task, model


def run(args, argv):
    """Runs `keras-lrne control`; returns the exit status."""
    return environments.run(args, argv, make_task_and_model)
