"""A generation of episodes of a functional JAX environment, as one compiled call.

Used by `keras_lrne.jax_rollout` for `keras_lrne.tasks.JaxEnvironment` (JAX backend only).
The environment follows gymnax's interface: `env.reset(key, params) -> (obs, state)` and
`env.step(key, state, action, params) -> (obs, state, reward, terminated, truncated,
info)`.
"""

import jax
import jax.numpy as jnp


def episode_keys(seed):
    """The PRNG keys of the episode of reset seed `seed` (an int32 scalar): `(reset_key,
    step_root)`; step `t` of the episode uses `jax.random.fold_in(step_root, t)`. An
    episode is a function of its seed, whatever the population or the member."""
    return jax.random.split(jax.random.PRNGKey(seed))


def make_generation(env, env_params, policy, num_steps, sample_steps=64, sample_episodes=8):
    """Compiles the episodes of a whole population into one function.

    Args:
        env: a gymnax-style environment.
        env_params: its parameters.
        policy: `policy(shared, member_weights, obs_batch) -> (actions, finite)`: one
            member's actions for a batch of observations (keras.ops, traced), and
            whether each row's outputs were finite; `shared` is what every member uses.
        num_steps: the step cap of an episode.
        sample_steps: steps whose observations are sampled (for a normaliser).
        sample_episodes: member-episodes sampled (the first ones, member-major).

    Returns:
        A `jax.jit` function `(shared, population, seeds) -> (returns, steps, failed,
        sample, sampled)`
        with `shared` a pytree of values every member uses, `population` a pytree of
        per-member arrays (members first) and `seeds` an int32 vector of episode reset
        seeds; the results have shape `(members, episodes)`:
        the sum of rewards until each episode ended, the steps it played, and whether it
        failed (a non-finite action, reward or observation: it ends there, its reward
        not added). Every member plays every seed. The loop stops when every episode
        ended or after `num_steps` steps; finished episodes add nothing. `sample` holds
        the observations the policy was given at the first `sample_steps` steps of the
        first `sample_episodes` member-episodes, shape `(sample_steps, sample_episodes,
        *observation_shape)`, and `sampled` whether each was a running episode's.
    """

    def reset(seed):
        reset_key, step_root = episode_keys(seed)
        obs, state = env.reset(reset_key, env_params)
        return obs, state, step_root

    # Inner vmap over a member's episodes, outer over members (the keys are shared).
    step_episodes = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    step_all = jax.vmap(step_episodes, in_axes=(None, 0, 0, None))
    policy_all = jax.vmap(policy, in_axes=(None, 0, 0))

    def generation(shared, population, seeds):
        members = jax.tree.leaves(population)[0].shape[0]
        obs, state, step_roots = jax.vmap(reset)(seeds)

        def tile(x):
            return jnp.broadcast_to(x[None], (members, *x.shape))

        obs, state = jax.tree.map(tile, (obs, state))
        shape = (members, seeds.shape[0])
        taken = min(sample_episodes, members * seeds.shape[0])
        sample = jnp.zeros((sample_steps, taken, *obs.shape[2:]), obs.dtype)
        carry = (jnp.int32(0), obs, state, jnp.zeros(shape, jnp.float32),
                 jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool), jnp.zeros(shape, bool),
                 sample, jnp.zeros((sample_steps, taken), bool))

        def running(carry):
            t, done = carry[0], carry[5]
            return jnp.logical_and(t < num_steps, jnp.logical_not(jnp.all(done)))

        def body(carry):
            t, obs, state, returns, steps, done, failed, sample, sampled = carry
            live = jnp.logical_not(done)
            if sample_steps:  # what the policy sees now, of the first member-episodes
                row = jnp.minimum(t, sample_steps - 1)
                here = t < sample_steps
                flat = obs.reshape((-1, *obs.shape[2:]))[:taken]
                sample = sample.at[row].set(jnp.where(here, flat, sample[row]))
                sampled = sampled.at[row].set(
                    jnp.where(here, live.reshape(-1)[:taken], sampled[row]))
            actions, finite = policy_all(shared, population, obs)
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(step_roots, t)
            new_obs, new_state, reward, terminated, truncated, _ = step_all(
                keys, state, actions, env_params)
            # One reward and end flag per member-episode (some environments give (1,)).
            reward = jnp.reshape(reward, shape).astype(jnp.float32)
            terminated = jnp.reshape(terminated, shape)
            truncated = jnp.reshape(truncated, shape)
            obs_finite = jnp.all(jnp.isfinite(new_obs.reshape((*shape, -1))), axis=-1)
            bad = live & ~(finite & jnp.isfinite(reward) & obs_finite)
            returns = returns + jnp.where(live & ~bad, reward, 0.0)
            steps = steps + live.astype(jnp.int32)
            ended = done | bad | terminated | truncated | (t + 1 >= num_steps)

            def keep(old, new):  # finished episodes keep their last state
                mask = done.reshape((*shape, *([1] * (new.ndim - 2))))
                return jnp.where(mask, old, new)

            obs, state = jax.tree.map(keep, (obs, state), (new_obs, new_state))
            return (t + 1, obs, state, returns, steps, ended, failed | bad, sample,
                    sampled)

        carry = jax.lax.while_loop(running, body, carry)
        return carry[3], carry[4], carry[6], carry[7], carry[8]

    return jax.jit(generation)
