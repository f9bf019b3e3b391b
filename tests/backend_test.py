"""Tests for the backend function set (keras_lrne.backend)."""

import numpy as np
from keras import ops

from keras_lrne import backend


def test_compile_fixed_matches_compile_and_reuses_one_trace():
    bk = backend.get()
    traces = []

    def fn(weights, x):
        traces.append(1)
        return ops.matmul(x, weights[0]) + weights[1]

    # Two function objects: JAX shares one trace cache per function.
    fixed, plain = bk.compile_fixed(lambda *a: fn(*a)), bk.compile(lambda *a: fn(*a))
    rng = np.random.RandomState(0)
    weights = [rng.randn(3, 2).astype("float32"), rng.randn(2).astype("float32")]
    for seed in range(3):
        x = np.random.RandomState(seed).randn(4, 3).astype("float32")
        np.testing.assert_allclose(bk.to_numpy(fixed(weights, x)),
                                   bk.to_numpy(plain(weights, x)), rtol=1e-6)
        np.testing.assert_allclose(bk.to_numpy(fixed(weights, x)),
                                   x @ weights[0] + weights[1], rtol=1e-5, atol=1e-6)
    assert len(traces) == 2  # one trace each, whatever the number of calls
