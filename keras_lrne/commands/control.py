"""`keras-lrne control`: evolve an MLP policy on a vector-observation gymnasium env, or
on a gymnax environment stepped inside the compiled population call (`gymnax:NAME`)."""

from keras_lrne.commands import environments

#: The `--env` prefix of gymnax environments (`gymnax:CartPole-v1`): run on the device
#: through `keras_lrne.tasks.JaxEnvironment`, on the JAX backend.
GYMNAX_PREFIX = "gymnax:"

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
                        "Acrobot-v1, MountainCar-v0, ...), LunarLander-v3; or "
                        "gymnax:NAME for a gymnax environment stepped inside the compiled "
                        "population call (gymnax:CartPole-v1, gymnax:Pendulum-v1, ...; "
                        "JAX backend)")


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


def gymnax_name(env):
    """The gymnax environment name of an `--env` value `gymnax:NAME`, else None."""
    return env[len(GYMNAX_PREFIX):] if env.startswith(GYMNAX_PREFIX) else None


def check_backend(env):
    """Refuses a gymnax `--env` off the JAX backend (before any work)."""
    import keras

    if gymnax_name(env) is not None and keras.config.backend() != "jax":
        raise ValueError(
            f"--env {env} is a gymnax environment: a JAX program, stepped inside the "
            "compiled population call, so it needs the JAX backend. Set KERAS_BACKEND=jax "
            f"(or use the gymnasium id, e.g. --env {gymnax_name(env)}, for the host loop). "
            f"Received: KERAS_BACKEND={keras.config.backend()}"
        )


def _gymnax_task(args):
    """`JaxEnvironment` for `--env gymnax:NAME` (Box actions squashed with tanh, as
    `Control`; Discrete ones argmax), observations normalised."""
    from keras_lrne.tasks import JaxEnvironment
    from keras_lrne.tasks.jax_environment import require_gymnax

    check_backend(args.env)
    name = gymnax_name(args.env)
    known = require_gymnax().registered_envs
    if name not in known:
        raise ValueError(
            "Received an invalid value for `--env`, expected gymnax:NAME with NAME one of "
            f"gymnax's environments ({', '.join(known)}). Received: --env={args.env!r}"
        )

    def make(action_transform):
        return JaxEnvironment(name, episodes=args.episodes,
                              max_episode_steps=args.max_episode_steps,
                              action_transform=action_transform,
                              normalize_observations=True)

    task = make("auto")
    return make("tanh") if task.action_transform != "argmax" else task


def make_task_and_model(args):
    """The task (`Control` for Box actions, squashed into their bounds; `Environment`
    for Discrete ones, argmax; `JaxEnvironment` for `gymnax:NAME`) and the MLP policy
    preset the arguments describe."""
    import keras_lrne

    tasks = keras_lrne.tasks
    if gymnax_name(args.env) is not None:
        task = _gymnax_task(args)
    else:
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
    check_backend(args.env)
    return environments.run(args, argv, make_task_and_model)
