"""MkDocs hook: repository files that the documentation links open as pages of the site.

The pages under `docs/` link the repository's files by their relative path, e.g.
`[examples/custom_fitness.py](../examples/custom_fitness.py)`, which works wherever the
Markdown is read with the repository beside it (a checkout, a repository browser). The
built site has no repository beside it, and the project publishes no repository URL to
send readers to, so this hook gives every linked file outside `docs/` a page of its own
under `source/` (code files highlighted, Markdown files rendered) and points the links
there. Links inside those pages are rewritten the same way, so `benchmarks/README.md`
can link its scripts and the results page. A link to a file that does not exist is left
alone, and `mkdocs build --strict` fails on it.

Loaded by `mkdocs.yml` (`hooks:`).
"""

import os
import posixpath
import re

from mkdocs.structure.files import File, InclusionLevel

#: The site folder of the generated pages.
PREFIX = "source"

#: An inline Markdown link or image target: `](target)` or `](target#anchor)`.
_LINK = re.compile(r"(\]\()([^()\s#]+)(#[^()\s]*)?(\))")
_FENCE = re.compile(r"^(```|~~~)", flags=re.M)
_LANGUAGES = {".py": "python", ".toml": "toml", ".ini": "ini", ".yml": "yaml",
              ".yaml": "yaml", ".json": "json", ".sh": "bash", ".cfg": "ini"}

#: src_uri of each generated page -> the repository path it shows.
_PAGES = {}


def _repository(config):
    return os.path.dirname(os.path.abspath(config.config_file_path))


def _docs_folder(config):
    return os.path.relpath(config.docs_dir, _repository(config)).replace(os.sep, "/")


def _page_uri(path):
    """The generated page of repository file `path`."""
    return f"{PREFIX}/{path}" if path.endswith(".md") else f"{PREFIX}/{path}.md"


def _outside_code(text):
    """`(start, end)` spans of `text` outside fenced code blocks."""
    spans, start, inside = [], 0, False
    for fence in _FENCE.finditer(text):
        if not inside:
            spans.append((start, fence.start()))
        else:
            start = text.find("\n", fence.end()) + 1 or len(text)
        inside = not inside
    if not inside:
        spans.append((start, len(text)))
    return spans


def _links(text, base):
    """`(match, repository path)` of every relative link outside code in `text`."""
    for start, end in _outside_code(text):
        for match in _LINK.finditer(text, start, end):
            target = match.group(2)
            if ":" in target or target.startswith("/"):
                continue  # absolute URL, mailto:, site-absolute path
            yield match, posixpath.normpath(posixpath.join(base, target))


def _is_source(path, repository, docs):
    return (not path.startswith(("..", f"{docs}/"))
            and os.path.isfile(os.path.join(repository, path)))


def _source_page(path, text):
    if path.endswith(".md"):
        return text
    language = _LANGUAGES.get(os.path.splitext(path)[1], "text")
    ticks = max([3, *(len(run) + 1 for run in re.findall(r"`{3,}", text))])
    fence = "`" * ticks
    return (f"# {path}\n\n`{path}` from the repository, as of this build of the site.\n\n"
            f"{fence}{language}\n{text.rstrip()}\n{fence}\n")


def on_files(files, config):
    """Adds a page under `source/` for every repository file the pages link to."""
    repository, docs = _repository(config), _docs_folder(config)
    _PAGES.clear()
    queue = [(f"{docs}/{f.src_uri}", f.content_string) for f in files.documentation_pages()]
    while queue:
        path, text = queue.pop()
        for _, target in _links(text, posixpath.dirname(path)):
            uri = _page_uri(target)
            if uri in _PAGES or not _is_source(target, repository, docs):
                continue
            with open(os.path.join(repository, target), encoding="utf-8") as f:
                content = f.read()
            _PAGES[uri] = target
            files.append(File.generated(config, uri, content=_source_page(target, content),
                                        inclusion=InclusionLevel.NOT_IN_NAV))
            if target.endswith(".md"):
                queue.append((target, content))
    return files


def on_page_markdown(markdown, page, config, files):
    """Points links to repository files at their pages (and, inside those pages, links
    to the documentation at its pages)."""
    docs = _docs_folder(config)
    here = page.file.src_uri
    path = _PAGES.get(here, f"{docs}/{here}")
    out, last = [], 0
    for match, target in _links(markdown, posixpath.dirname(path)):
        if target.startswith(f"{docs}/"):
            uri = target[len(docs) + 1:]
        elif _page_uri(target) in _PAGES:
            uri = _page_uri(target)
        else:
            continue
        relative = posixpath.relpath(uri, posixpath.dirname(here) or ".")
        out.append(markdown[last:match.start(2)] + relative)
        last = match.end(2)
    out.append(markdown[last:])
    return "".join(out)
