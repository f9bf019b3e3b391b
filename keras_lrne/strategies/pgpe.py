"""Policy gradients with parameter-based exploration (Sehnke et al., 2010) with ClipUp."""

import dataclasses
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne._validation import check_bool, check_int, check_number
from keras_lrne.strategies._separable import SeparableGaussian
from keras_lrne.strategies.open_es import _serialize_optimizer, shape_fitness


@dataclasses.dataclass(frozen=True)
class PGPEConfig:
    population_size: int
    sigma: float = 0.1
    center_learning_rate: float = 0.15
    stdev_learning_rate: float = 0.1
    optimizer: object = "clipup"
    max_speed: float = None
    momentum: float = 0.9
    stdev_max_change: float = 0.2
    mean_evaluation: bool = True


class PGPEState(NamedTuple):
    """State of a `PGPE` run.

    Attributes:
        mean: list of tensors, the search distribution's mean (one per variable).
        std: list of tensors, its standard deviation per number (weight units).
        optimizer_variables: ClipUp's velocity (one tensor per variable, in units of
            each tensor's init std), or the values of a Keras optimizer's variables.
        elite: what `best` returns: the mean evaluated last generation (with
            `mean_evaluation`), else the best member of it.
        noise_seeds: the seeds of the population last asked (one per symmetric pair).
        weights: the centered ranks of the last `tell`, one per member.
        scales: each variable's init std (the unit of `sigma` and of the mean's step).
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last losses (sanitised), or None.
        best_loss: best finite loss so far.
    """

    mean: list
    std: list
    optimizer_variables: list
    elite: list
    noise_seeds: np.ndarray
    weights: np.ndarray
    scales: np.ndarray
    generation: int
    seed: int
    losses: object
    best_loss: float


def clipup(gradients, velocity, learning_rate, momentum, max_speed):
    """One ClipUp step (Toklu et al., 2020, "ClipUp: A Simple and Powerful Optimizer
    for Distribution-based Policy Evolution").

    The gradient (all tensors together) is normalised to length `learning_rate`, added
    to the velocity decayed by `momentum`, and the velocity is clipped to length
    `max_speed`: `v = momentum * v + learning_rate * g / ||g||`, then
    `v *= min(1, max_speed / ||v||)`. The parameters then move by `-v` (the gradient
    is one of a loss). A zero gradient adds nothing.

    Args:
        gradients: list of tensors, the gradient of the loss.
        velocity: list of tensors of the same shapes, the previous velocity.
        learning_rate: the step's length before momentum and clipping.
        momentum: the velocity's decay.
        max_speed: the longest velocity.

    Returns:
        The new velocity, a list of tensors (also the step: `params -= velocity`).

    Example:

    >>> v = clipup([keras.ops.ones((3,))], [keras.ops.zeros((3,))], 0.15, 0.9, 0.3)
    """
    gradients = [ops.cast(g, "float32") for g in gradients]
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in gradients))
    scale = ops.where(norm > 0, learning_rate / ops.maximum(norm, 1e-30), 0.0)
    velocity = [momentum * ops.cast(v, "float32") + g * scale
                for v, g in zip(velocity, gradients)]
    speed = ops.sqrt(sum(ops.sum(ops.square(v)) for v in velocity))
    clip = ops.where(speed > max_speed, max_speed / ops.maximum(speed, 1e-30), 1.0)
    return [v * clip for v in velocity]


class PGPE(SeparableGaussian):
    """Policy gradients with parameter-based exploration (Sehnke et al., 2010,
    "Parameter-exploring policy gradients"), with the ClipUp optimizer (Toklu et al.,
    2020), as EvoTorch and EvoJAX run it.

    The search distribution is a Gaussian with one standard deviation per evolvable
    number. Sampling is symmetric: each noise seed gives the pair
    `mean + std * eps, mean - std * eps` (`eps` standard normal, regenerated from the
    seed, never stored). The losses are replaced by their centered ranks in
    `[-0.5, 0.5]` (NaN and inf last, ties share their rank). With `d_i` the rank of
    `mean + std * eps_i` minus that of its twin, `a_i` their average and `b` the average
    rank, the mean's gradient is `mean_i(d_i / 2 * std * eps_i)` and the std's
    `mean_i((a_i - b) * std * (eps_i^2 - 1))`. The mean steps by ClipUp (default) or a
    Keras optimizer, in units of each tensor's init std; the std by
    `std -= stdev_learning_rate * gradient`, each number's change limited to
    `stdev_max_change` of its value.

    ClipUp normalises the gradient to length `center_learning_rate`, accumulates it
    in a velocity with `momentum` and clips the velocity to `max_speed` (default
    `2 * center_learning_rate`, the ratio ClipUp's paper recommends); see `clipup`.

    With `mean_evaluation` (default) the mean itself is evaluated every generation (one
    extra member, the last): it is what `best` returns, what the model holds after the
    generation and what `loss` logs (`best_member_loss` logs the best member). Without
    it the model holds the generation's best member. The run records every
    generation's noise seeds and ranks, so any mean or member is rebuilt from the
    starting weights (the model's when `evolve()` starts, kept once in the run's
    `Lineage` and checkpoint) and the run seed (`model.rebuild_member(g, None)` is the
    mean of population `g`), and Ray workers receive the starting weights once, then
    seeds only. The mean starts at those weights (a trained model is a starting point;
    `init` without `start`: the run's first initial member).

    Args:
        population_size: members sampled per generation, an even number (members come
            in symmetric pairs).
        sigma: initial standard deviation, relative to each tensor's init std.
            Defaults to 0.1.
        center_learning_rate: ClipUp's step length (or the learning rate of the Keras
            optimizer named by `optimizer`), in units of each tensor's init std.
            Defaults to 0.15.
        stdev_learning_rate: learning rate of the std. Defaults to 0.1.
        optimizer: `"clipup"` (default), a Keras optimizer name (`"adam"`, `"sgd"`,
            ..., with `center_learning_rate`) or a `keras.optimizers.Optimizer`
            instance (its own learning rate is used; each run uses a fresh copy).
        max_speed: ClipUp's largest velocity, or None (default) for
            `2 * center_learning_rate`.
        momentum: ClipUp's momentum. Defaults to 0.9.
        stdev_max_change: the largest relative change of a std in one generation.
            Defaults to 0.2.
        mean_evaluation: evaluate the mean every generation. Defaults to True.

    Returns:
        A strategy for `model.evolve(strategy=...)` or for `init`/`ask`/`tell` directly.

    Example:

    >>> strategy = keras_lrne.strategies.PGPE(population_size=64, sigma=0.1)
    >>> history = model.evolve(x, y, strategy=strategy, generations=50)
    """

    _state_type = PGPEState

    def __init__(self, population_size, sigma=0.1, center_learning_rate=0.15,
                 stdev_learning_rate=0.1, optimizer="clipup", max_speed=None, momentum=0.9,
                 stdev_max_change=0.2, mean_evaluation=True):
        population_size = check_int("population_size", population_size, 2)
        if population_size % 2:
            raise ValueError(
                "Received an invalid value for `population_size`, expected an even number "
                "(PGPE samples members in symmetric pairs). "
                f"Received: population_size={population_size}"
            )
        sigma = check_number("sigma", sigma)
        center_learning_rate = check_number("center_learning_rate", center_learning_rate)
        stdev_learning_rate = check_number("stdev_learning_rate", stdev_learning_rate,
                                           allow_zero=True)
        if isinstance(optimizer, str) and optimizer.lower() == "clipup":
            optimizer = "clipup"
        else:
            optimizer = _serialize_optimizer(optimizer)
        if max_speed is not None:
            max_speed = check_number("max_speed", max_speed)
        if (isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, (int, float))
                or not 0 <= momentum < 1):
            raise ValueError(
                "Received an invalid value for `momentum`, expected a number in [0, 1). "
                f"Received: momentum={momentum!r}"
            )
        if (isinstance(stdev_max_change, (bool, np.bool_))
                or not isinstance(stdev_max_change, (int, float))
                or not 0 < stdev_max_change < 1):
            raise ValueError(
                "Received an invalid value for `stdev_max_change`, expected a number in "
                f"(0, 1). Received: stdev_max_change={stdev_max_change!r}"
            )
        mean_evaluation = check_bool("mean_evaluation", mean_evaluation)
        super().__init__(PGPEConfig(
            population_size=population_size, sigma=sigma,
            center_learning_rate=center_learning_rate,
            stdev_learning_rate=stdev_learning_rate, optimizer=optimizer,
            max_speed=max_speed, momentum=float(momentum),
            stdev_max_change=float(stdev_max_change), mean_evaluation=mean_evaluation))

    @property
    def max_speed(self):
        """ClipUp's largest velocity (`2 * center_learning_rate` unless given)."""
        speed = self.config.max_speed
        return 2 * self.config.center_learning_rate if speed is None else speed

    @property
    def num_noise(self):
        """Noise vectors (seeds) per generation: one per symmetric pair."""
        return self.population_size // 2

    def member_seeds(self, noise_seeds):
        """Per member: its noise seed and sign (+1, or -1 for the mirrored twin)."""
        noise_seeds = np.asarray(noise_seeds, np.int32)
        return (np.repeat(noise_seeds, 2).astype(np.int32),
                np.tile(np.asarray([1, -1], np.int32), len(noise_seeds)))

    def _shape_weights(self, losses):
        return shape_fitness(losses, "centered_rank")

    def _keras_optimizer(self, ops_):
        spec = self.config.optimizer
        if isinstance(spec, str):
            optimizer = keras.optimizers.get(
                {"class_name": spec, "config": {"learning_rate":
                                                self.config.center_learning_rate}})
        else:
            optimizer = keras.optimizers.deserialize(spec)
        variables = [keras.Variable(np.zeros(shape, "float32"), trainable=True,
                                    name=f"z_{i}") for i, (shape, _) in enumerate(ops_.layout)]
        optimizer.build(variables)
        to_numpy = lrne_backend.get().to_numpy
        initial = [to_numpy(v.value).copy() for v in optimizer.variables]
        return optimizer, variables, initial

    def _initial_extra(self, ops_, update):
        if self.config.optimizer == "clipup":
            return [ops.zeros(shape, "float32") for shape, _ in ops_.layout]
        return [ops.convert_to_tensor(v) for v in update.keras[2]]

    def _make_update(self, ops_):
        bk = lrne_backend.get()
        pairs = self.num_noise
        lr_std = self.config.stdev_learning_rate
        max_change = self.config.stdev_max_change
        use_clipup = self.config.optimizer == "clipup"
        lr, momentum, max_speed = (self.config.center_learning_rate, self.config.momentum,
                                   self.max_speed)
        keras_parts = None if use_clipup else self._keras_optimizer(ops_)
        scales = ops_.scales

        def update(mean, std, extra, noise_seeds, weights):
            weights = ops.cast(weights, "float32")
            plus, minus = weights[0::2], weights[1::2]
            average = (plus + minus) / 2 - ops.mean(weights)
            first, second = ops_.moments(noise_seeds, plus - minus, average)
            grad_std = (second - ops.sum(average)) / pairs
            grads, new_std, z = [], [], []
            for m, s, scale, g_mean, g_std in zip(mean, std, scales, ops_.split(first),
                                                  ops_.split(grad_std)):
                s = ops.cast(s, "float32")
                # The mean's gradient in units of the tensor's init std.
                grads.append(g_mean * (s / scale) * (0.5 / pairs))
                step = ops.clip(s - lr_std * (s * g_std), s * (1 - max_change),
                                s * (1 + max_change))
                new_std.append(step)
                z.append(ops.cast(m, "float32") / scale)
            if use_clipup:
                extra = clipup(grads, extra, lr, momentum, max_speed)
                z = [zi - v for zi, v in zip(z, extra)]
            else:
                optimizer, variables, _ = keras_parts
                z, extra = bk.apply_optimizer(optimizer, variables, extra, grads, z)
            new_mean = [ops.cast(zi * scale, m.dtype) for zi, scale, m in zip(z, scales, mean)]
            return new_mean, new_std, list(extra)

        return _Update(bk.compile_random(update), keras_parts)


class _Update:
    """A compiled update that also keeps its Keras optimizer (`keras`: the optimizer,
    its variables and its initial values), which the compiled function refers to."""

    def __init__(self, fn, keras_parts):
        self.fn = fn
        self.keras = keras_parts

    def __call__(self, *args):
        return self.fn(*args)

