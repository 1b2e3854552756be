"""Open every page of the built book in headless Chromium, offline, and check what a reader sees.

Usage (after ``make build``)::

    python tools/browser_check.py [--html _build/html] [--screenshots _build/screenshots]

Checks, for every HTML page of the book:

* the page and every resource it loads come from the local build (any request to another host is
  blocked and reported: the book must work with no network), with no 4xx/5xx answer;
* every internal link points to an existing file, and its ``#anchor``, if any, exists there;
* every image is loaded (``naturalWidth > 0``); every chapter page has at least one figure;
* every page with mathematics has it rendered by MathJax (``mjx-container`` elements in the DOM,
  none with a ``merror``);
* no equation label is left as text, e.g. ``(eq-dV)`` where ``(26)`` belongs (a reference that did
  not resolve, or a label written in a docstring or code cell; see ``tools/book_eq_labels.py``);
* at the 1280 x 900 window, nothing runs past the right edge of the content column: code (cells and
  solutions, dropdowns opened), cell outputs and display equations fit it with no sideways scroll
  bar (a long equation is broken into aligned lines); a table may scroll sideways inside its own
  box, but none is clipped or sticks out (``overflow_problems``; the layout is
  ``_static/birl.css``); the tables that scroll are listed, as candidates for a narrower table;
* every raster figure has a natural resolution of at least twice its rendered width (sharp on a
  high-density screen; ``use_book_style`` makes the chapters' figures so), and none is shrunk
  below 96% of its intended size, which would shrink its fonts with it
  (``figure_problems``).

Screenshots of the landing page and of the first chapter go to ``--screenshots``.
Exit status 0 if every check passes, 1 otherwise (the failures are listed).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

from bs4 import BeautifulSoup

#: an equation label shown as text instead of its number
LABEL_TEXT = re.compile(r"\(eq-[A-Za-z0-9_-]+\)")

#: the window every page is checked at
VIEWPORT = {"width": 1280, "height": 900}

#: a figure's natural width / rendered width must be at least this (2 = sharp on a 2x screen)
MIN_FIGURE_RESOLUTION = 2.0
#: a figure drawn below this fraction of its intended width (its ``width`` attribute) shrinks
#: its fonts with it: use_book_style draws 100 px per inch, so 8 pt text is 11.1 px, and stays at
#: least 8 pt on the page (10.7 CSS px) only when the figure is drawn at 96% or more
MIN_FIGURE_SCALE = 0.96

# What runs past the right edge of the content column (article.bd-article's content box), per kind
# of element. "strict" kinds (code, outputs, display equations) must fit with no sideways scroll
# bar; tables may scroll inside their own box (or a scrolling container inside the column). An element is a problem
# when content is clipped (overflow hidden, its own or an ancestor's), or when what it draws
# (its box, or content spilling out of it) ends right of the column. Dropdowns are opened first so
# that the solutions are measured too; elements not displayed are skipped.
OVERFLOW_JS = """
() => {
  const article = document.querySelector('article.bd-article');
  if (!article) return [];
  for (const d of article.querySelectorAll('details')) d.open = true;
  const right = el => el.getBoundingClientRect().right;
  const colRight = right(article) - parseFloat(getComputedStyle(article).paddingRight);
  const TOL = 1;
  const scrolls = ox => ox === 'auto' || ox === 'scroll';
  const clips = ox => ox === 'hidden' || ox === 'clip';
  const KINDS = [
    ['code', 'div.highlight > pre', true],
    ['output', 'div.cell_output pre, div.cell_output .output.text_html, div.cell_output img', true],
    ['equation', 'mjx-container[display="true"]', true],
    ['table', 'table', false],
  ];
  const label = (el, kind) => {
    const anchor = el.closest('[id]');
    const where = anchor && anchor !== article ? '#' + anchor.id : '';
    if (kind === 'equation') return where;  // its text is a glyph per line
    const text = (el.innerText || el.textContent || '').trim().split('\\n')[0].slice(0, 50);
    return (where ? where + ' ' : '') + JSON.stringify(text);
  };
  const seen = new Set();
  const out = [];
  for (const [kind, selector, strict] of KINDS) {
    for (const el of article.querySelectorAll(selector)) {
      if (seen.has(el) || (kind === 'code' && el.closest('.cell_output'))) continue;
      seen.add(el);
      const box = el.getBoundingClientRect();
      if (box.width === 0 && box.height === 0) continue;
      const ox = getComputedStyle(el).overflowX;
      const extra = el.scrollWidth - el.clientWidth;
      let why = null;
      if (extra > TOL && clips(ox)) why = `clipped (${extra} px hidden)`;
      else if (extra > TOL && scrolls(ox) && strict) why = `scrolls sideways (${extra} px)`;
      let scrolling = extra > TOL && scrolls(ox);
      let edge = box.right + (extra > TOL && !scrolls(ox) && !clips(ox) ? extra : 0);
      for (let a = el.parentElement; !why && a && a !== article && edge > colRight + TOL;
           a = a.parentElement) {
        const aox = getComputedStyle(a).overflowX;
        if (!scrolls(aox) && !clips(aox)) continue;
        const hidden = Math.round(edge - right(a));
        if (hidden > TOL && clips(aox)) why = `clipped by its container (${hidden} px hidden)`;
        else if (hidden > TOL && strict) why = `scrolls sideways in its container (${hidden} px)`;
        else if (hidden > TOL) scrolling = true;
        edge = Math.min(edge, right(a));
      }
      if (!why && edge > colRight + TOL)
        why = `runs ${Math.round(edge - colRight)} px past the column's right edge`;
      out.push([kind, why, why || scrolling ? label(el, kind) : '', !why && scrolling]);
    }
  }
  return out;
}
"""

FIGURES_JS = """
() => Array.from(document.querySelectorAll(
    'article.bd-article .cell_output img, article.bd-article figure img'))
  .filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0)
  .map(i => [i.getAttribute('src'), i.naturalWidth, i.getBoundingClientRect().width,
             parseFloat(i.style.width) || parseFloat(i.getAttribute('width')) || null,
             i.naturalHeight, i.getBoundingClientRect().height])
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("browser_check: no Chromium found (Debian: apt-get install chromium)")


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``root`` on 127.0.0.1 at a free port, quietly, in a daemon thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D401 - silence the access log
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@functools.cache
def ids_of(path: Path) -> frozenset[str]:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    return frozenset(tag["id"] for tag in soup.find_all(id=True))


def static_link_problems(root: Path, page: Path) -> list[str]:
    """Broken internal links and missing images of one page, from its HTML source."""
    problems = []
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    rel = page.relative_to(root)
    for tag, attr in (("a", "href"), ("img", "src"), ("link", "href"), ("script", "src")):
        for element in soup.find_all(tag):
            target = element.get(attr)
            if not target or urlparse(target).scheme in {
                "http",
                "https",
                "mailto",
                "data",
                "javascript",
            }:
                continue
            url, anchor = urldefrag(target)
            url = urlparse(url).path  # drop ?v=... cache-busting queries
            dest = page if url == "" else (page.parent / unquote(url)).resolve()
            if url and dest.is_dir():
                dest = dest / "index.html"
            if not dest.exists():
                problems.append(f"{rel}: <{tag} {attr}={target!r}> points to a missing file")
            elif anchor and dest.suffix == ".html" and anchor not in ids_of(dest):
                problems.append(f"{rel}: <{tag} {attr}={target!r}>: no element with id {anchor!r}")
    return problems


def unresolved_labels(text: str) -> list[str]:
    """Each equation label left as text in a page's text, with some context."""
    return [
        " ".join(text[max(0, m.start() - 40) : m.end() + 10].split())
        for m in LABEL_TEXT.finditer(text)
    ]


def overflow_problems(page, rel: str) -> tuple[list[str], dict[str, list[int]]]:
    """Elements of the open page that run past (or are clipped at) the content column's edge.

    Returns the problems (per kind: how many of how many, and the first three) and, per kind,
    ``[overflowing, scrolling inside their own box (allowed), checked]``.
    """
    found: dict[str, list] = {}
    for kind, why, label, scrolling in page.evaluate(OVERFLOW_JS):
        found.setdefault(kind, []).append((why, label, scrolling))
    problems, counts = [], {}
    for kind, items in found.items():
        bad = [f"{label}: {why}" for why, label, _ in items if why]
        scrolling = [label for _, label, scrolls in items if scrolls]
        counts[kind] = [len(bad), len(scrolling), len(items)]
        if scrolling:  # allowed, but a candidate for a shorter line
            print(
                f"  {rel}: {len(scrolling)} {kind}(s) scroll in their own box: {', '.join(scrolling)}"
            )
        if bad:
            examples = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
            problems.append(
                f"{rel}: {len(bad)} of {len(items)} {kind} elements overflow the content column "
                f"at {VIEWPORT['width']} px: {examples}"
            )
    return problems, counts


def figure_problems(page, rel: str) -> list[str]:
    """Raster figures of the open page that are not sharp (natural < 2x rendered), are shrunk
    below their intended size (a ``width`` attribute or inline style), or are distorted."""
    problems = []
    for src, natural, rendered, intended, natural_h, rendered_h in page.evaluate(FIGURES_JS):
        if urlparse(src).path.lower().endswith(".svg"):
            continue
        name = Path(urlparse(src).path).name
        if natural < MIN_FIGURE_RESOLUTION * rendered - 0.5:
            problems.append(
                f"{rel}: figure {name} is {natural} px wide for {rendered:.0f} px on the page "
                f"({natural / rendered:.2f}x, needs {MIN_FIGURE_RESOLUTION:g}x: plot after "
                "birl_lite.plotting.use_book_style(), which sends figures at twice their size)"
            )
        if abs(rendered / rendered_h - natural / natural_h) > 0.02 * natural / natural_h:
            problems.append(
                f"{rel}: figure {name} is distorted: drawn {rendered:.0f} x {rendered_h:.0f} px, "
                f"its aspect ratio is {natural} x {natural_h}"
            )
        if intended and rendered < MIN_FIGURE_SCALE * intended:
            problems.append(
                f"{rel}: figure {name} is drawn at {rendered:.0f} px of its {intended:.0f} px "
                f"({rendered / intended:.0%}): too wide for the column, its fonts shrink with it"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("_build/html"))
    parser.add_argument("--screenshots", type=Path, default=Path("_build/screenshots"))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per page")
    args = parser.parse_args()
    root = args.html.resolve()
    if not (root / "index.html").exists():
        sys.exit(
            f"browser_check: {args.html}/index.html not found; build the book first (make build)"
        )
    pages = sorted(
        p for p in root.rglob("*.html") if not p.relative_to(root).parts[0].startswith(("_", "."))
    )
    from playwright.sync_api import sync_playwright

    server, base = serve(root)
    problems: list[str] = []
    blocked: list[str] = []
    totals: dict[str, list[int]] = {}  # kind -> [overflowing, scrolling, checked], every page
    args.screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport=VIEWPORT)

        def route(route_):
            if route_.request.url.startswith(base):
                route_.continue_()
            else:
                blocked.append(route_.request.url)
                route_.abort()

        context.route("**/*", route)
        page_obj = context.new_page()
        for path in pages:
            rel = path.relative_to(root).as_posix()
            problems += static_link_problems(root, path)
            bad_responses: list[str] = []
            page_obj.on(
                "response",
                handler := lambda resp, bad=bad_responses: (
                    bad.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None
                ),
            )
            if 'http-equiv="Refresh"'.lower() in path.read_text(encoding="utf-8").lower():
                # A redirect page (index.html -> intro.html): its target is checked statically
                # above and opened in its own turn; the redirect would race the DOM checks.
                print(f"  {rel}: redirect page")
                continue
            page_obj.goto(base + rel, wait_until="load", timeout=args.timeout * 1000)
            n_math = page_obj.locator("div.math, span.math").count()
            if n_math:
                try:
                    page_obj.wait_for_function(
                        "n => document.querySelectorAll('mjx-container').length >= n",
                        arg=n_math,
                        timeout=args.timeout * 1000,
                    )
                except Exception:  # noqa: BLE001 - report as a failed check
                    got = page_obj.locator("mjx-container").count()
                    problems.append(f"{rel}: {n_math} equations, only {got} rendered by MathJax")
                if page_obj.locator("mjx-container merror").count():
                    problems.append(f"{rel}: MathJax reports errors (merror) in an equation")
            images = page_obj.evaluate(
                "() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
            )
            for src, ok in images:
                if not ok:
                    problems.append(f"{rel}: image {src} did not load")
            if rel.startswith("chapters/") and not images:
                problems.append(f"{rel}: a chapter page without any figure")
            for context in unresolved_labels(page_obj.inner_text("body")):
                problems.append(f"{rel}: equation label as text, not a number: ...{context}...")
            problems += figure_problems(page_obj, rel)
            if rel in ("intro.html",) or (rel.startswith("chapters/01") and rel.endswith(".html")):
                shot = args.screenshots / (Path(rel).stem + ".png")
                page_obj.screenshot(path=str(shot), full_page=False)
            # last: it opens the dropdowns
            page_problems, counts = overflow_problems(page_obj, rel)
            problems += page_problems
            for kind, count in counts.items():
                totals[kind] = [
                    a + b for a, b in zip(totals.get(kind, [0, 0, 0]), count, strict=True)
                ]
            for bad in bad_responses:
                problems.append(f"{rel}: HTTP {bad}")
            page_obj.remove_listener("response", handler)
            print(f"  {rel}: {n_math} equations, {len(images)} images")
        browser.close()
    server.shutdown()
    for url in sorted(set(blocked)):
        problems.append(f"request to another host (the book must work offline): {url}")
    print(
        f"browser_check: {len(pages)} pages opened in headless Chromium; screenshots in {os.fspath(args.screenshots)}"
    )
    print(
        f"browser_check: overflowing the content column at {VIEWPORT['width']} px: "
        + ", ".join(
            f"{bad} of {n} {kind}"
            + (f" ({scrolling} scroll inside their own box)" if scrolling else "")
            for kind, (bad, scrolling, n) in totals.items()
        )
    )
    if problems:
        print(f"browser_check: {len(problems)} problem(s):")
        for p in problems:
            print("  -", p)
        return 1
    print(
        "browser_check: all pages load offline, links resolve, images load, equations render, "
        "nothing overflows the column, figures are sharp"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
