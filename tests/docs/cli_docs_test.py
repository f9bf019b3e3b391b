"""docs/cli.md against the `keras-lrne` argument parsers.

Every subcommand has a section (`## \\`keras-lrne NAME\\``); every option a subcommand's
parser defines is named in its section or in a shared section whose "Applies to:" line
lists the subcommand; every option named in a subcommand's section exists in its parser,
every option of a shared section in one of the subcommands it applies to, and every
option anywhere on the page in some parser.
"""

import argparse
import pathlib
import re

import pytest

from keras_lrne import cli

pytestmark = pytest.mark.backend_independent

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "cli.md"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def subcommands():
    """`{name: parser}` of the `keras-lrne` subcommands, and the top-level parser."""
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(action.choices)


def options(parser):
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def positionals(parser):
    return [a.metavar or a.dest for a in parser._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def sections():
    """`(heading, text)` of the page's `## ` sections (the text before the first: "")."""
    parts = re.split(r"^## (.*)$", PAGE.read_text(), flags=re.M)
    return [("", parts[0])] + list(zip(parts[1::2], parts[2::2]))


def command_sections():
    found = {}
    for heading, text in sections():
        match = re.fullmatch(r"`keras-lrne (\w+)`", heading.strip())
        if match:
            found[match.group(1)] = text
    return found


def shared_sections():
    """`(heading, commands, text)` of every section with an "Applies to:" line."""
    found = []
    for heading, text in sections():
        match = re.search(r"^Applies to: (.*)$", text, flags=re.M)
        if match:
            found.append((heading, re.findall(r"`(\w+)`", match.group(1)), text))
    return found


def test_every_subcommand_has_a_section():
    _, commands = subcommands()
    assert sorted(command_sections()) == sorted(commands)


def test_every_option_of_every_parser_is_documented():
    _, commands = subcommands()
    own = command_sections()
    shared = shared_sections()
    missing = {}
    for name, parser in commands.items():
        named = set(OPTION.findall(own[name]))
        for _, applies_to, text in shared:
            if name in applies_to:
                named |= set(OPTION.findall(text))
        absent = sorted(options(parser) - named - {"--help"})
        absent += [p for p in positionals(parser) if p not in own[name]]
        if absent:
            missing[name] = absent
    assert not missing, f"options of the parsers that docs/cli.md does not name: {missing}"


def test_every_option_named_exists():
    top, commands = subcommands()
    wrong = {}
    for name, text in command_sections().items():
        extra = set(OPTION.findall(text)) - options(commands[name])
        if extra:
            wrong[f"keras-lrne {name}"] = sorted(extra)
    for heading, applies_to, text in shared_sections():
        assert applies_to and set(applies_to) <= set(commands), heading
        known = set().union(*(options(commands[name]) for name in applies_to))
        extra = set(OPTION.findall(text)) - known
        if extra:
            wrong[heading] = sorted(extra)
    every = set().union(options(top), *(options(p) for p in commands.values()))
    extra = set(OPTION.findall(PAGE.read_text())) - every
    if extra:
        wrong["docs/cli.md"] = sorted(extra)
    assert not wrong, f"options docs/cli.md names that the parsers do not define: {wrong}"


def test_the_check_sees_a_missing_and_an_invented_option(monkeypatch):
    """The two checks above fail on a page that drops an option or names a wrong one."""
    text = PAGE.read_text()
    assert "`--fresh-batch`" in text
    monkeypatch.setattr(pathlib.Path, "read_text",
                        lambda self, *a, **k: text.replace("--fresh-batch", "--fresh-batches"))
    with pytest.raises(AssertionError, match="--fresh-batch'"):
        test_every_option_of_every_parser_is_documented()
    with pytest.raises(AssertionError, match="--fresh-batches"):
        test_every_option_named_exists()
