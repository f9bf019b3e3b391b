"""keras-lrne's strategies against reference implementations on benchmark functions.

Two references, each in its own module (its arguments follow the reference's name):

- `pycma`: `CMAES` and `SepCMAES` against pycma (`cma`, Hansen's reference CMA-ES),
  `strategies_bbob_pycma.py`;
- `evosax`: `SNES`, `PGPE` and `SepCMAES` against evosax's implementations (JAX
  backend), `strategies_bbob_evosax.py`.

    pip install "keras-lrne[bench]"
    python benchmarks/strategies_bbob.py pycma --seeds 10 --sep-1000
    KERAS_BACKEND=jax python benchmarks/strategies_bbob.py evosax --seeds 10
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("pycma", "evosax"):
        print(__doc__)
        return 2
    if argv[0] == "pycma":
        import strategies_bbob_pycma as reference
    else:
        import strategies_bbob_evosax as reference
    return reference.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
