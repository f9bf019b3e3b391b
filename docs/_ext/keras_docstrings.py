"""Griffe extension: parse keras-lrne's Keras-style docstrings without warnings.

The package follows Keras' docstring layout (DESIGN.md): `Args:`, `Call arguments:`,
`Returns:` and an `Example:` section whose doctest lines are *not* indented under the
title, as in Keras itself:

    Example:

    >>> layer = FactorizedDense(8, rank=2)

Google-style parsing (griffe) expects section contents indented under the title, with
no blank line between. This extension rewrites each docstring before it is parsed, so
the sources keep Keras' layout:

- `Example:` / `Examples:` followed by unindented content: the content, up to the next
  section title, is indented under an `Examples:` title (griffe's examples section, which
  renders `>>>` lines as Python console code; a singular `Example:` would be a plain
  admonition).
- `Call arguments:` (an admonition for griffe, rendered as a collapsible plain list) is
  handed to griffe as `Other Parameters:`, which it parses into name and description
  items; `docs/_templates/python/readthedocs/docstring/other_parameters.html.jinja`
  renders them as the Parameters section is, titled "Call arguments". The package's
  docstrings use no other "Other Parameters" section.

Loaded by mkdocstrings through `mkdocs.yml` (handlers.python.options.extensions).
"""

import re

import griffe

_SECTION = re.compile(
    r"^(Args|Arguments|Call arguments|Returns|Raises|Yields|Examples?|Notes?|Warnings?|"
    r"Attributes|References?):\s*$"
)
_EXAMPLE = re.compile(r"^Examples?:\s*$")
_CALL_ARGUMENTS = re.compile(r"^Call arguments:\s*$")


def _indent_examples(lines):
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not _EXAMPLE.match(line):
            out.append(line)
            continue
        out.append("Examples:")
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or lines[j].startswith(" "):
            continue  # already Google style (or empty)
        i = j  # drop the blank lines between the title and its content
        while i < len(lines) and not _SECTION.match(lines[i]):
            out.append("    " + lines[i] if lines[i].strip() else "")
            i += 1
        while out and not out[-1].strip():
            out.pop()
        if i < len(lines):
            out.append("")
    return out


def _call_arguments_as_other_parameters(lines):
    return ["Other Parameters:" if _CALL_ARGUMENTS.match(line) else line for line in lines]


def rewrite(text):
    """Returns `text` (a cleaned docstring) in the layout griffe's Google parser expects."""
    lines = text.split("\n")
    return "\n".join(_call_arguments_as_other_parameters(_indent_examples(lines)))


class KerasDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded package before it is parsed."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
