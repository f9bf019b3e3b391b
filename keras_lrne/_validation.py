"""Argument checks shared by the package: errors name the argument and repeat the value."""

import numbers

import numpy as np


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
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or (
        value < minimum
    ):
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
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
