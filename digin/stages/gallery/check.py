"""Pure-Python gallery check: every page reachable from index.html has only relative links to existing files (and
in-page links to anchors it has), scripts and stylesheets that exist, images that decode, and a grid (`rows.js`)
whose thumbnails and page links exist. Runs without a browser (the Chromium test checks rendering on top of this)."""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROWS_PREFIX = "window.DIGIN_ROWS = "


# The gallery writes every attribute double-quoted and escapes all text, so a quoted src/href attribute of these
# tags can only be a real reference (a regex is ~10× faster than html.parser on thousands of pages).
_REF = re.compile(r'<(a|img|script|link)\b[^>]*?\s(href|src)="([^"]*)"', re.IGNORECASE)


def _refs(text: str) -> tuple[list[str], list[str], list[str]]:
    """(links, images, scripts / stylesheets) referenced by a page."""
    links, images, files = [], [], []
    for tag, _, value in _REF.findall(text):
        ref = html.unescape(value)
        tag = tag.lower()
        (links if tag == "a" else images if tag == "img" else files).append(ref)
    return links, images, files


class _Resolver:
    """Relative references → files inside the gallery, with string path arithmetic and cached existence checks
    (the same image is referenced from many pages)."""

    def __init__(self, root: Path):
        self.root = os.path.normpath(str(root))
        self._files: dict[str, set[str]] = {}  # folder -> names of the regular files in it (listed once)
        self._resolved: dict[tuple[str, str], str] = {}  # (page folder, reference) -> file, once found

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def _is_file(self, target: str) -> bool:
        """os.path.isfile, from one listing of the target's folder (tens of thousands of images)."""
        folder, name = os.path.split(target)
        if folder not in self._files:
            try:
                with os.scandir(folder) as it:
                    self._files[folder] = {e.name for e in it if e.is_file()}
            except OSError:
                self._files[folder] = set()
        return name in self._files[folder]

    def __call__(self, page: str, ref: str):
        hit = self._resolved.get((os.path.dirname(page), ref))
        if hit is not None:
            return hit, None
        parts = urlsplit(ref)
        if parts.scheme or parts.netloc or ref.startswith("/") or not parts.path:
            return None, f"{self.rel(page)}: not a relative file link: {ref!r}"
        target = os.path.normpath(os.path.join(os.path.dirname(page), unquote(parts.path)))
        if not target.startswith(self.root + os.sep):
            return None, f"{self.rel(page)}: link leaves the gallery: {ref!r}"
        if not self._is_file(target):
            return None, f"{self.rel(page)}: broken link {ref!r}"
        self._resolved[(os.path.dirname(page), ref)] = target
        return target, None


def _grid_refs(rows_file: Path) -> tuple[list[str], list[str], str | None]:
    """(page links, image paths) named by a rows.js, or an error when it is not what the gallery writes."""
    text = rows_file.read_text(encoding="utf-8")
    if not text.startswith(ROWS_PREFIX):
        return [], [], f"{rows_file.name}: does not start with {ROWS_PREFIX!r}"
    try:
        data = json.loads(text[len(ROWS_PREFIX):].rstrip().rstrip(";"))
    except ValueError as e:
        return [], [], f"{rows_file.name}: not JSON ({e})"
    links = [r["p"] for r in data["rows"]]
    images = [im[1] for r in data["rows"] for im in r["im"]]
    return links, images, None


def check_gallery(root, decode: bool = True) -> tuple[list[str], int, int]:
    """Crawl from root/index.html. Returns (problems, pages visited, images checked). decode=False only checks
    that images exist (the gallery build decodes every image it stores, so its own check skips that)."""
    from PIL import Image

    root = Path(root).resolve()
    resolve = _Resolver(root)
    problems, seen_pages, seen_images = [], set(), set()
    todo = [os.path.join(resolve.root, "index.html")]
    if not os.path.isfile(todo[0]):
        return [f"no index.html in {root}"], 0, 0
    while todo:
        page = todo.pop()
        if page in seen_pages:
            continue
        seen_pages.add(page)
        with open(page, encoding="utf-8") as f:
            text = f.read()
        links, images, files = _refs(text)
        for frag in {ref for ref in links if ref.startswith("#")}:  # in-page links: the anchor must exist
            if f'id="{html.escape(frag[1:])}"' not in text:
                problems.append(f"{resolve.rel(page)}: no anchor for {frag!r}")
        links = [ref for ref in links if not ref.startswith("#")]
        for src in files:
            target, err = resolve(page, src)
            if err:
                problems.append(err)
            elif os.path.basename(target) == "rows.js":
                grid_links, grid_images, err = _grid_refs(Path(target))
                problems += [err] if err else []
                links += grid_links
                images += grid_images
        for href in links:
            target, err = resolve(page, href)
            if err:
                problems.append(err)
            elif target.endswith(".html"):
                todo.append(target)
        for src in images:
            target, err = resolve(page, src)
            if err:
                problems.append(err)
                continue
            if target in seen_images:
                continue
            seen_images.add(target)
            if not decode:
                continue
            try:
                with Image.open(target) as im:
                    im.load()
                    if im.width < 1 or im.height < 1:
                        problems.append(f"{src}: empty image")
            except Exception as e:  # any decode failure is a broken image
                problems.append(f"{resolve.rel(page)}: image {src!r} does not decode ({e})")
    return problems, len(seen_pages), len(seen_images)
