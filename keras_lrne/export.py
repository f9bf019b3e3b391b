"""`export_policy`: an evolved policy as a TensorFlow SavedModel that plays on its own."""

import json
import os

import keras
import numpy as np

POLICY_MARKER = "keras_lrne_policy.json"


def export_policy(model, task, filepath):
    """Exports `model` as a SavedModel mapping raw environment observations to actions.

    The serving signature `serve` takes a batch of raw observations exactly as the
    environment returns them (e.g. stacked uint8 frames, or vector observations with the
    run's observation normalisation baked in) and returns actions (argmax indices for
    Discrete spaces, the task's continuous transform for Box spaces). A process with
    TensorFlow alone can load and run it (`tf.saved_model.load(filepath).serve(obs)`);
    keras-lrne is not needed. Works for runs on the JAX backend too.

    Args:
        model: the evolved policy (after `model.evolve(task, ...)` it holds the elite).
        task: the `keras_lrne.tasks.Environment` (or `JaxEnvironment`: the policy is
            exported, not the gymnax environment) it was evolved on.
        filepath: output directory.

    Returns:
        `filepath`.

    Example:

    >>> model.evolve(task, strategy=keras_lrne.strategies.GA(64, 8), generations=20)
    >>> keras_lrne.export_policy(model, task, "policy")
    >>> tf.saved_model.load("policy").serve(observations)  # -> actions
    """
    from keras_lrne.tasks.environment import Environment

    if not (isinstance(task, Environment) or _is_jax_environment(task)):
        raise ValueError(
            "Received an invalid value for `task`, expected a keras_lrne environment task "
            f"(Atari, CarRacing, Control, Environment, JaxEnvironment). Received: task={task!r}"
        )
    if not getattr(model, "built", False) or getattr(model, "lineage", None) is None:
        raise ValueError(
            "The model was never evolved: call `model.evolve(task, ...)` before exporting its "
            f"policy. Received: model={getattr(model, 'name', model)!r}"
        )
    raw = task.observation_space  # what the environment returns, before preprocessing
    spec = keras.InputSpec(shape=(None, *raw.shape), dtype=str(np.dtype(raw.dtype)))

    def serve(observations):
        return task.export_output(model(task.export_input(observations), training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    archive.write_out(filepath, verbose=False)
    marker_kind = _task_kind(task)
    marker = {
        "format": "keras_lrne_policy",
        "version": 1,
        "task": repr(task),
        "kind": marker_kind,
        "env": task.name if marker_kind == "gymnax" else (
            task.env if isinstance(task.env, str) else None),
        "env_kwargs": _json_safe(getattr(task, "env_kwargs", {})),
        "max_episode_steps": int(task.episode_cap),
        "observation_shape": list(raw.shape),
        "observation_dtype": str(np.dtype(raw.dtype)),
        "action_transform": task.action_transform,
    }
    if marker["kind"] == "atari":
        marker["atari"] = {"game": task.game, "version": task.version,
                           "noop_max": task.noop_max,
                           "full_action_space": task.full_action_space}
    with open(os.path.join(filepath, POLICY_MARKER), "w") as f:
        json.dump(marker, f, indent=2)
    return filepath


def _is_jax_environment(task):
    return getattr(task, "on_device", False) and hasattr(task, "env_params")


def _task_kind(task):
    """How `keras-lrne play` rebuilds the environment: `atari` (ale-py emulators),
    `carracing` (CarRacing-v3 with a 4-frame stack), `gymnax` (`gymnax.make(env)`) or
    `gym` (`gymnasium.make(env)`)."""
    from keras_lrne.tasks.atari import Atari
    from keras_lrne.tasks.car_racing import CarRacing

    if _is_jax_environment(task):
        return "gymnax"
    if isinstance(task, Atari):
        return "atari"
    if isinstance(task, CarRacing):
        return "carracing"
    return "gym"


def _json_safe(kwargs):
    """The JSON-serialisable entries of `kwargs` (env factories' arguments may not be)."""
    safe = {}
    for key, value in dict(kwargs).items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        safe[key] = value
    return safe


def merge_lora(model):
    """A copy of `model` with every Keras LoRA adapter merged into its kernel.

    After evolving a model's LoRA adapters (`layer.enable_lora(rank)`; see
    `keras_lrne.evolve`), `model.save()` keeps Keras' LoRA layout (base kernel plus
    factors), which plain Keras loads. For export to code that knows nothing of LoRA, this
    returns the same architecture without adapters, whose kernels are the merged
    `W0 + (alpha / rank) * A @ B` (what the LoRA model computes). The model itself is not
    changed.

    Args:
        model: a built Sequential or functional Keras model with at least one
            LoRA-enabled layer (a subclassed model is refused: its architecture cannot
            be rebuilt from its layers' configurations).

    Returns:
        A new model (`keras.models.clone_model` without the adapters) with the merged
        weights.

    Example:

    >>> model.layers[1].enable_lora(4)
    >>> keras_lrne.evolve(model, x, y, strategy=keras_lrne.strategies.GA(64, 8))
    >>> merged = keras_lrne.merge_lora(model)
    >>> merged.save("merged.keras")
    """
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    adapted = [layer for layer in layers if getattr(layer, "lora_enabled", False)]
    if not adapted:
        raise ValueError(
            "Received a model without LoRA adapters: call `layer.enable_lora(rank)` on "
            f"its layers first. Received: model={model.name!r}"
        )
    try:
        functional = bool(model.inputs)
    except (AttributeError, ValueError):
        functional = False
    if not (functional or isinstance(model, keras.Sequential)):
        raise ValueError(
            "`merge_lora` supports Sequential and functional models: it rebuilds the "
            "architecture without adapters from its layers' configurations, which a "
            "subclassed model's `call()` does not describe. Build the model as a "
            "functional or Sequential model, or keep the LoRA layout (`model.save()` "
            "writes it and plain Keras loads it; each adapted layer's `kernel` is its "
            f"merged kernel). Received: model={model.name!r} of the subclassed class "
            f"{type(model).__name__}"
        )
    merged_values = {}
    for layer in adapted:
        if hasattr(layer, "_embeddings"):
            merged_values[id(layer._embeddings)] = layer.embeddings
        else:
            merged_values[id(layer._kernel)] = layer.kernel

    def without_lora(layer):
        config = layer.get_config()
        if getattr(layer, "lora_enabled", False):
            config.pop("lora_rank", None)
            config.pop("lora_alpha", None)
        return layer.__class__.from_config(config)

    merged = keras.models.clone_model(model, clone_function=without_lora)
    from keras_lrne.genome import is_lora_variable

    source = [v for v in model.weights if not is_lora_variable(v)]
    target = merged.weights
    if len(source) != len(target) or any(is_lora_variable(v) for v in target):
        raise ValueError(
            f"Could not merge the LoRA adapters of model {model.name!r}: its copy without "
            f"adapters has {len(target)} weights, expected {len(source)}."
        )
    for to, frm in zip(target, source):
        # A copy: JAX's predict donates a model's buffers, which must not be shared.
        to.assign(np.array(keras.ops.convert_to_numpy(merged_values.get(id(frm), frm))))
    return merged
