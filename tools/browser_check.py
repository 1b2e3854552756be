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
  not resolve, or a label written in a docstring or code cell; see ``tools/book_eq_labels.py``).

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
    args.screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})

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
            for bad in bad_responses:
                problems.append(f"{rel}: HTTP {bad}")
            page_obj.remove_listener("response", handler)
            print(f"  {rel}: {n_math} equations, {len(images)} images")
            if rel in ("intro.html",) or (rel.startswith("chapters/01") and rel.endswith(".html")):
                shot = args.screenshots / (Path(rel).stem + ".png")
                page_obj.screenshot(path=str(shot), full_page=False)
        browser.close()
    server.shutdown()
    for url in sorted(set(blocked)):
        problems.append(f"request to another host (the book must work offline): {url}")
    print(
        f"browser_check: {len(pages)} pages opened in headless Chromium; screenshots in {os.fspath(args.screenshots)}"
    )
    if problems:
        print(f"browser_check: {len(problems)} problem(s):")
        for p in problems:
            print("  -", p)
        return 1
    print("browser_check: all pages load offline, links resolve, images load, equations render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
