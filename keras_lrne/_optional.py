"""Optional dependencies: imported only when used, with an error naming the extra."""

import importlib


def require(module, needed_by, extra, packages=None):
    """Imports and returns `module`, or raises an `ImportError` saying what needs it and
    which extra installs it.

    Args:
        module: the module to import, e.g. `"gymnasium"`.
        needed_by: what needs it, e.g. `"Environment tasks"`.
        extra: the keras-lrne extra that installs it, e.g. `"rl"`.
        packages: how to name the packages in the message (default: `module`).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            f"{needed_by} need {packages or module}. Install the {extra} extra: "
            f'pip install "keras-lrne[{extra}]"'
        ) from error
