"""The JAX side of `keras_lrne.strategies.Evosax`: evosax's algorithms on flat JAX
vectors, their PRNG keys and their state pytrees (kept by the strategy as a list of
arrays, so that checkpoints hold arrays only).

evosax is written in JAX, so the bridge runs on the JAX backend only; everything it
does with JAX itself is here (the convention: backend code only under
`keras_lrne/backend/`).
"""

import jax
import jax.numpy as jnp


def key(seed, generation, stream):
    """The PRNG key of `(run seed, generation, stream)`."""
    folded = jax.random.fold_in(jax.random.PRNGKey(int(seed)), int(generation))
    return jax.random.fold_in(folded, stream)


def default_params(cls, population_size, constructor):
    """The `default_params` of evosax's algorithm `cls` built with `constructor`
    (a probe on 2 numbers: what the bridge checks keywords against)."""
    return cls(population_size=population_size, solution=jnp.zeros((2,), jnp.float32),
               **constructor).default_params


def as_array(values):
    """`values` (numpy, a list or a JAX array) as a float32 JAX array."""
    return jnp.asarray(values, jnp.float32)


class Algorithm:
    """An evosax algorithm on `n` numbers, with its params and the structure of its
    state (what `Evosax` caches per configuration and `n`).

    Args:
        cls: the evosax algorithm class.
        population_size: members per generation.
        n: the number of evolved numbers.
        constructor: keywords of the constructor.
        params: fields of `default_params` to replace.
    """

    def __init__(self, cls, population_size, n, constructor, params):
        from evosax.algorithms.population_based.base import PopulationBasedAlgorithm

        self.algorithm = cls(population_size=population_size,
                             solution=jnp.zeros((n,), jnp.float32), **constructor)
        self.params = self.algorithm.default_params
        if params:
            self.params = self.params.replace(**params)
        self.population_based = isinstance(self.algorithm, PopulationBasedAlgorithm)
        probe = jax.random.PRNGKey(0)
        if self.population_based:
            shapes = jax.eval_shape(self.algorithm.init, probe,
                                    jnp.zeros((population_size, n), jnp.float32),
                                    jnp.zeros((population_size,), jnp.float32), self.params)
        else:
            shapes = jax.eval_shape(self.algorithm.init, probe,
                                    jnp.zeros((n,), jnp.float32), self.params)
        self.treedef = jax.tree_util.tree_structure(shapes)

    def unflatten(self, leaves):
        """The state pytree of a list of arrays (`leaves`)."""
        return jax.tree_util.tree_unflatten(self.treedef, [jnp.asarray(x) for x in leaves])

    def init(self, key, mean):
        """The leaves of a distribution-based algorithm's state around `mean`."""
        return jax.tree_util.tree_leaves(
            self.algorithm.init(key, as_array(mean), self.params))

    def ask(self, key, leaves):
        """`(population, leaves)`: evosax's `ask` may change its state too (e.g.
        CMA-ES's eigendecomposition)."""
        population, state = self.algorithm.ask(key, self.unflatten(leaves), self.params)
        return population, jax.tree_util.tree_leaves(state)

    def tell(self, key, population, fitness, leaves):
        """`(leaves, best_fitness)` after telling `fitness`; with no `leaves` (a
        population-based algorithm not yet initialised) evosax's `init` from the
        evaluated population. `best_fitness` is evosax's best so far (population-based
        algorithms), else None."""
        population, fitness = as_array(population), as_array(fitness)
        if not leaves:
            state = self.algorithm.init(key, population, fitness, self.params)
        else:
            state, _ = self.algorithm.tell(key, population, fitness,
                                           self.unflatten(leaves), self.params)
        best = float(state.best_fitness) if self.population_based else None
        return jax.tree_util.tree_leaves(state), best

    def solution(self, leaves):
        """The flat solution the model holds: evosax's best so far (population-based
        algorithms), else its mean."""
        state = self.unflatten(leaves)
        return state.best_solution if self.population_based else state.mean
