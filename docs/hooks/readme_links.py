"""A MkDocs hook: links in the README's sections still lead somewhere on the site.

The site's pages take sections of the repository's README.md (pymdownx.snippets), whose
links are written from the repository root: ``docs/parking.md`` is ``parking.md`` here.
This adds a Markdown preprocessor that runs after the snippets are in and rewrites those
links; anything else the README links to must exist on the site too, or the strict build
says which link is broken.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

#: ``](docs/x.md)`` or ``](docs/x.md#anchor)``, as the README writes its links into docs/.
_INTO_DOCS = re.compile(r"\]\(docs/")

#: Runs after pymdownx.snippets (priority 32), before anything reads the links.
_PRIORITY = 31


class _ReadmeLinks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return [_INTO_DOCS.sub("](", line) for line in lines]


class ReadmeLinks(Extension):
    """Rewrites the README's links into docs/ as links between the site's pages."""

    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 - Markdown's name
        md.preprocessors.register(_ReadmeLinks(md), "readme_links", _PRIORITY)


def on_config(config: Any) -> Any:
    """Add the rewriting to the site's Markdown extensions."""
    config.markdown_extensions.append(ReadmeLinks())
    return config
