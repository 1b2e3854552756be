"""Sphinx extension of the book (``sphinx.local_extensions`` in ``_config.yml``): equation labels
written as plain text become equation numbers in the rendered pages.

The package's docstrings (the API page) and the chapters' code cells and printed outputs refer to
equations by their label in parentheses, e.g. ``(eq-dV)``: readable in a terminal or a notebook,
where no number exists, but in the book a reader should see the number the page shows, ``(23)``.
After references are resolved, every ``(eq-name)`` in a page's text becomes that number: a link to
the equation in prose and docstrings, plain text inside code blocks and outputs (which keep their
syntax highlighting). A label that no page defines is a warning, so ``-W`` fails the build.
``tools/browser_check.py`` checks the built pages for any label text left over.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.util import logging

LABEL = re.compile(r"\((eq-[A-Za-z0-9_-]+)\)")
logger = logging.getLogger(__name__)


def _reference(app, docname: str, label: str, node: nodes.Node) -> nodes.Element | None:
    """The math domain's reference to ``label`` (its text is e.g. ``(23)``), or None, with a
    warning, if no page defines it."""
    xref = pending_xref("", refdomain="math", reftype="numref", reftarget=label)
    xref.source, xref.line = node.source, node.line
    ref = app.env.get_domain("math").resolve_xref(
        app.env, docname, app.builder, "numref", label, xref, nodes.Text("")
    )
    if ref is None:
        logger.warning(
            "equation label %r written in the text is not defined on any page",
            label,
            location=node,
            type="book",
            subtype="eq_label",
        )
    return ref


def _in(node: nodes.Node, kinds: tuple[type, ...]) -> bool:
    while node is not None:
        if isinstance(node, kinds):
            return True
        node = node.parent
    return False


def resolve_label_text(app, doctree: nodes.document, docname: str) -> None:
    # Code cells, outputs and literal blocks: the number as plain text. ``rawsource`` must equal the
    # text, or Sphinx treats the block as a parsed literal and drops the highlighting.
    for block in list(doctree.findall(nodes.literal_block)):
        text = block.astext()
        if not LABEL.search(text):
            continue

        def number(match, block=block):
            ref = _reference(app, docname, match.group(1), block)
            return ref.astext() if ref is not None else match.group(0)

        new = LABEL.sub(number, text)
        block.rawsource = new
        block.children = []
        block += nodes.Text(new)
    # Prose (docstrings, markdown): a link whose text is the number; inline ``code``: plain text.
    skip = (nodes.literal_block, nodes.raw, nodes.math, nodes.math_block, nodes.reference)
    for text in list(doctree.findall(nodes.Text)):
        value = str(text)
        if not LABEL.search(value) or text.parent is None or _in(text.parent, skip):
            continue
        parts: list[nodes.Node] = []
        last = 0
        for match in LABEL.finditer(value):
            ref = _reference(app, docname, match.group(1), text.parent)
            if ref is None:
                continue
            parts.append(nodes.Text(value[last : match.start()]))
            inline = isinstance(text.parent, nodes.literal)
            parts.append(nodes.Text(ref.astext()) if inline else ref)
            last = match.end()
        if parts:
            parts.append(nodes.Text(value[last:]))
            text.parent.replace(text, parts)


def setup(app):
    app.connect("doctree-resolved", resolve_label_text)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
