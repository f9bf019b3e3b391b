"""The built documentation site, as a reader sees it: `mkdocs build --strict` into a
temporary folder (a few seconds; skipped where MkDocs is not installed), then checks on
the HTML of what the issue found wrong in a browser."""

import html
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def pages(site):
    return sorted(p for p in site.rglob("*.html") if p.name != "404.html")


def api_pages(site):
    found = sorted((site / "api").rglob("index.html"))
    assert len(found) >= 10
    return found


def test_returns_items_have_no_stray_separator(site):
    """A Keras-style `Returns:` has no name or type, so nothing precedes the text."""
    items = 0
    for path in api_pages(site):
        text = path.read_text()
        for section in re.findall(
                r'<th class="field-name">Returns:</th>(.*?)</td>', text, flags=re.S):
            for item in re.findall(r"<li>(.*?)<div class=\"doc-md-description\">", section,
                                   flags=re.S):
                items += 1
                assert not item.strip(), f"{path.parent.name}: Returns item starts {item!r}"
    assert items >= 20


def test_call_arguments_render_like_parameters(site):
    layers = (site / "api" / "layers" / "index.html").read_text()
    assert '<details class="call-arguments"' not in layers
    sections = re.findall(r'<th class="field-name">Call arguments:</th>(.*?)</td>', layers,
                          flags=re.S)
    assert len(sections) >= 5
    assert all("<b><code>" in section for section in sections)  # one named item each
    assert "<b><code>inputs</code></b>" in layers


def test_signatures_are_wrapped(site):
    """mkdocstrings formats signatures (with ruff) so that none runs off the page."""
    longest = 0
    for path in api_pages(site):
        for block in re.findall(r'<div class="doc-signature highlight"><pre>(.*?)</pre>',
                                path.read_text(), flags=re.S):
            text = html.unescape(re.sub(r"<[^>]+>", "", block))
            longest = max([longest, *(len(line) for line in text.splitlines())])
    assert 0 < longest <= 100, f"a signature line is {longest} characters long"


def test_code_is_highlighted_without_a_cdn(site):
    for path in pages(site):
        text = path.read_text()
        external = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(?:https?:)?//[^"]+"', text)
        assert not external, (path, external)
        assert "stylesheets/pygments.css" in text and "stylesheets/extra.css" in text, path
    quickstart = (site / "quickstart" / "index.html").read_text()
    assert '<div class="highlight"><pre>' in quickstart
    assert '<span class="kn">import</span>' in quickstart  # Pygments tokens, at build time
    css = (site / "stylesheets" / "pygments.css").read_text()
    assert ".highlight .kn" in css


def test_tables_wrap(site):
    css = (site / "stylesheets" / "extra.css").read_text()
    assert re.search(r"table td,[^{]*\{\s*white-space: normal;", css)
    assert "overflow-x: auto" in css


def test_every_relative_link_resolves(site):
    broken = []
    for path in pages(site):
        text = re.sub(r"<pre>.*?</pre>", "", path.read_text(), flags=re.S)  # code is text
        for href in re.findall(r'(?:href|src)="([^"#:?]+)(?:[#?][^"]*)?"', text):
            target = os.path.normpath(os.path.join(path.parent, href))
            if os.path.isdir(target):
                target = os.path.join(target, "index.html")
            if not os.path.exists(target):
                broken.append((str(path.relative_to(site)), href))
    assert not broken, broken[:20]


def test_repository_files_open_as_site_pages(site):
    page = (site / "custom_fitness" / "index.html").read_text()
    assert 'href="../source/examples/custom_fitness.py/"' in page
    source = (site / "source" / "examples" / "custom_fitness.py" / "index.html").read_text()
    assert "def accuracy" in html.unescape(re.sub(r"<[^>]+>", "", source))
    benchmarks = (site / "source" / "benchmarks" / "index.html").read_text()
    assert 'href="../../results/"' in benchmarks  # its link to docs/results.md


def test_no_plain_text_repository_paths():
    """A repository file named in a page is a link (the site gives it a page)."""
    path = re.compile(
        r"(?<![\[\w/])`((?:examples|benchmarks|keras_lrne|tests)/[\w./-]+\.\w+)(?:::\w+)?`"
        r"(?!\]\()")
    plain = {}
    for page in sorted(DOCS.rglob("*.md")):
        if page.name == "comparison.md":
            continue  # reports written by `--compare`
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        found = [m for m in path.findall(text) if (ROOT / m).is_file()]
        if found:
            plain[str(page.relative_to(DOCS))] = found
    assert not plain, plain
