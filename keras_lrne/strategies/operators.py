"""Pure selection and reproduction operators shared by strategies (numpy, host side).

They act on the loss vector and on indices only: the population tensors themselves stay on
the device and are gathered and mutated by the compiled `reproduce` function.
"""

import numpy as np


def sanitize_losses(losses):
    """Returns float64 losses where NaN and +-inf count as the worst possible (+inf)."""
    losses = np.asarray(losses, dtype=np.float64).copy()
    losses[~np.isfinite(losses)] = np.inf
    return losses


def truncation_selection(losses, num_parents):
    """Indices of the `num_parents` lowest losses, best first (stable for ties)."""
    order = np.argsort(sanitize_losses(losses), kind="stable")
    return order[:num_parents].astype(np.int32)


def uniform_parents(rng, elites, num_children):
    """Each child's parent, drawn uniformly from `elites`."""
    return np.asarray(elites, np.int32)[rng.integers(0, len(elites), size=num_children)]


def child_seeds(rng, num_children):
    """One independent non-negative 31-bit mutation seed per child."""
    return rng.integers(0, 2**31 - 1, size=num_children, dtype=np.int64).astype(np.int32)


def generation_rng(seed, generation, stream=1):
    """The host random generator of one generation of a run (deterministic)."""
    return np.random.default_rng([int(seed), int(stream), int(generation)])
