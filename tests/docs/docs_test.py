"""The documentation site is complete and consistent (fast checks; CI runs `mkdocs build`).

Every page in `mkdocs.yml`'s nav exists and every page is in the nav; every
`::: dotted.path` directive of the API reference names an importable object with a
docstring; every public name of the package is in the API reference; the quick start
matches the README's.
"""

import importlib
import pathlib
import re

import pytest

pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"

# Optional dependencies whose absence skips (not fails) a directive's import check.
OPTIONAL_MODULES = ("keras_tuner",)


def nav_pages():
    """The `.md` paths of the `nav:` block (parsed by hand: no PyYAML needed)."""
    text = MKDOCS.read_text()
    match = re.search(r"^nav:\n(.*?)(?=^\S)", text, flags=re.S | re.M)
    assert match, "mkdocs.yml has no nav"
    return re.findall(r"^\s+-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", match.group(1), flags=re.M)


def directives():
    """`(page, dotted_path)` for every `::: dotted.path` line of the API reference."""
    found = []
    for page in sorted((DOCS / "api").glob("*.md")):
        for path in re.findall(r"^:::\s+(\S+)\s*$", page.read_text(), flags=re.M):
            found.append((page.name, path))
    return found


def _missing_optional(error):
    """The optional dependency whose absence caused `error` (or its causes), if any."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name in OPTIONAL_MODULES:
            return error.name
        error = error.__cause__ or error.__context__
    return None


def resolve(dotted):
    """Imports the longest importable module prefix of `dotted` and walks the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ImportError as error:
            optional = _missing_optional(error)
            if optional:
                pytest.skip(f"{dotted} needs the optional {optional}")
            if not isinstance(error, ModuleNotFoundError) or (
                error.name != module_name and not module_name.startswith(f"{error.name}.")
            ):
                raise
            continue
        for attribute in parts[i:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def test_nav_pages_exist_and_every_page_is_in_the_nav():
    pages = nav_pages()
    assert "index.md" in pages and "quickstart.md" in pages
    assert any(p.startswith("api/") for p in pages)
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"nav entries without a file in docs/: {missing}"
    assert len(set(pages)) == len(pages), "a page is in the nav twice"
    on_disk = {
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if not p.relative_to(DOCS).as_posix().startswith("_")
    }
    assert sorted(on_disk - set(pages)) == [], "pages missing from the nav"


@pytest.mark.parametrize("page,dotted", directives(), ids=lambda v: str(v))
def test_api_directive_resolves(page, dotted):
    obj = resolve(dotted)
    assert obj is not None
    assert (getattr(obj, "__doc__", None) or "").strip(), f"{dotted} ({page}) has no docstring"


def test_api_reference_covers_the_public_api():
    import keras_lrne

    documented = set()
    for _, dotted in directives():
        try:
            documented.add(id(resolve(dotted)))
        except pytest.skip.Exception:
            continue
    public = {}
    for module_name in ("keras_lrne", "keras_lrne.layers", "keras_lrne.strategies",
                        "keras_lrne.tasks"):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not isinstance(obj, type(keras_lrne)):  # skip sub-modules
                public[f"{module_name}.{name}"] = obj
    presets = keras_lrne.presets
    for name, obj in vars(presets).items():
        if callable(obj) and not name.startswith("_") and obj.__module__ == presets.__name__:
            public[f"keras_lrne.presets.{name}"] = obj
    missing = sorted(name for name, obj in public.items() if id(obj) not in documented)
    assert not missing, f"public names missing from docs/api: {missing}"


def test_quick_start_matches_the_readme():
    def first_python_block(path):
        blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
        assert blocks, f"{path.name} has no python block"
        return blocks

    readme = first_python_block(ROOT / "README.md")[0]
    assert readme in first_python_block(DOCS / "quickstart.md")


def test_tox_docs_env_installs_the_docs_extra():
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^docs = \[(.*?)\]$", pyproject, flags=re.M | re.S)
    assert extra, "pyproject.toml has no `docs` extra"
    pins = re.findall(r'"([^"]+)"', extra.group(1))
    tox = (ROOT / "tox.ini").read_text()
    env = re.search(r"^\[testenv:docs\]\n(.*?)(?=^\[|\Z)", tox, flags=re.S | re.M)
    assert env, "tox.ini has no docs environment"
    deps = re.search(r"^deps =\n((?:[ \t]+\S.*\n)+)", env.group(1), flags=re.M)
    assert deps and sorted(d.strip() for d in deps.group(1).splitlines()) == sorted(pins)
    assert "mkdocs build --strict" in env.group(1)
    assert re.search(r"^envlist = .*\bdocs\b", tox, flags=re.M)


def nav_entries():
    """`(depth, title, page or None)` of every line of the `nav:` block, in order."""
    text = MKDOCS.read_text()
    block = re.search(r"^nav:\n(.*?)(?=^\S)", text, flags=re.S | re.M).group(1)
    entries = []
    for line in block.splitlines():
        match = re.match(r"^(\s*)-\s+(?:([^:\n]+):\s*)?(\S+\.md)?\s*$", line)
        if match:
            entries.append((len(match.group(1)), (match.group(2) or "").strip(),
                            match.group(3)))
    return entries


def section_pages(title):
    """The pages of the nav section `title` (its nested pages included)."""
    entries = nav_entries()
    start = next(i for i, (_, t, page) in enumerate(entries) if t == title and page is None)
    depth, pages = entries[start][0], []
    for entry_depth, _, page in entries[start + 1:]:
        if entry_depth <= depth:
            break
        if page:
            pages.append(page)
    return pages


def index_links():
    return set(re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", (DOCS / "index.md").read_text()))


def test_home_page_lists_every_guide_and_top_level_page():
    guides = section_pages("Guides")
    assert len(guides) >= 10 and "cli.md" in guides
    top_level = [page for depth, _, page in nav_entries()
                 if page and depth == min(d for d, _, _ in nav_entries())]
    expected = set(guides) | set(top_level) | {"results.md", "api/index.md"}
    missing = sorted(expected - {"index.md"} - index_links())
    assert not missing, f"docs/index.md does not link: {missing}"


def test_home_page_api_table_names_the_public_api():
    import keras_lrne

    table = (DOCS / "index.md").read_text()
    names = [n for n in keras_lrne.__all__
             if not isinstance(getattr(keras_lrne, n), type(keras_lrne))]
    assert "evolve" in names
    missing = [n for n in names if f"`keras_lrne.{n}" not in table]
    assert not missing, f"docs/index.md's API table leaves out {missing}"


def test_nav_titles_and_order():
    entries = nav_entries()
    # A section whose first page repeats the section's own title reads "X > X".
    for i, (depth, title, page) in enumerate(entries[:-1]):
        if page is None and title:
            child_depth, child_title, _ = entries[i + 1]
            assert child_depth > depth and child_title and child_title != title, (title,
                                                                                  entries[i + 1])
    pages = [page for _, _, page in entries if page]
    reports = [i for i, page in enumerate(pages) if page.startswith("results/")]
    assert pages.index("design.md") < min(reports)
    assert pages.index("results.md") < min(reports)


def test_results_page_gives_results_before_method():
    text = (DOCS / "results.md").read_text()
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings[0] == "Summary"
    assert headings[-1] == "How these numbers were made"


def test_no_docstring_uses_the_section_call_arguments_render_as():
    """docs/_ext/keras_docstrings.py hands `Call arguments:` to griffe as "Other
    Parameters", and the site renders that section titled "Call arguments": a real
    "Other Parameters" (or "Keyword Args") section would be mislabelled."""
    heading = re.compile(r"^\s*(other (parameters|params|arguments|args)|keyword "
                         r"(arguments|args)):\s*$", flags=re.I | re.M)
    used = [str(p.relative_to(ROOT)) for p in (ROOT / "keras_lrne").rglob("*.py")
            if heading.search(p.read_text())]
    assert not used
