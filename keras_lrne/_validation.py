"""Argument checks shared by the package: errors name the argument and repeat the value."""

import math
import numbers
import os
import sys
import warnings

import numpy as np

#: Files of the package: a warning about a run points at the first frame outside them.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message, category):
    """`warnings.warn` attributed to the code that called keras-lrne (the user's
    `evolve()` call), not to the line of the package that warns."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, skip_file_prefixes=(_PACKAGE_DIR,))
        return
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def is_int(value):
    """True for Python and numpy integers, False for bools (and everything else)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(name, value, minimum=1, allow_none=False):
    """Returns `value` as an `int` if it is an integer >= `minimum`, else raises.

    `bool`, floats and (unless `allow_none`) `None` are rejected with
    ``Received an invalid value for `name`, expected a positive integer. Received:
    name=value``.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value received.
        minimum: the smallest accepted value (1: "a positive integer").
        allow_none: accept `None` (returned as is).

    Returns:
        `int(value)`, or `None` when allowed and given.
    """
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        expected = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer >= {minimum}")
        if allow_none:
            expected += " or None"
        raise ValueError(
            f"Received an invalid value for `{name}`, expected {expected}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_bool(name, value):
    """Returns `value` as a `bool` if it is one (Python or numpy), else raises.

    Strings such as `"no"` and numbers are rejected rather than silently taken as truthy:
    ``Received an invalid value for `name`, expected a boolean (True or False). Received:
    name=value``.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a boolean (True or False). "
            f"Received: {name}={value!r}"
        )
    return bool(value)


def check_number(name, value, allow_zero=False):
    """Returns `value` as a `float` if it is a finite number > 0 (>= 0 with
    `allow_zero`), else raises ``Received an invalid value for `name`, expected a
    positive finite number. Received: name=value``."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        expected = "a non-negative" if allow_zero else "a positive"
        raise ValueError(
            f"Received an invalid value for `{name}`, expected {expected} finite number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_int_pair(name, value):
    """Returns `value` as a pair of positive ints (an int `n` gives `(n, n)`)."""
    items = (value, value) if is_int(value) else (
        tuple(value) if isinstance(value, (tuple, list)) and len(value) == 2 else None)
    if items is None or not all(is_int(v) and v > 0 for v in items):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a positive integer or a "
            f"tuple of 2 positive integers. Received: {name}={value!r}"
        )
    return (int(items[0]), int(items[1]))
