"""Pure-Python gallery check: every page reachable from index.html has only relative links to existing files,
scripts and stylesheets that exist, images that decode, and a grid (`rows.js`) whose thumbnails and page links
exist. Runs without a browser (the Chromium test checks rendering on top of this)."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROWS_PREFIX = "window.DIGIN_ROWS = "


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.files = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "script" and a.get("src"):
            self.files.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.files.append(a["href"])


def _resolve(page: Path, ref: str, root: Path):
    parts = urlsplit(ref)
    if parts.scheme or parts.netloc or ref.startswith("/") or not parts.path:
        return None, f"{page.relative_to(root)}: not a relative file link: {ref!r}"
    target = (page.parent / unquote(parts.path)).resolve()
    if not target.is_relative_to(root):
        return None, f"{page.relative_to(root)}: link leaves the gallery: {ref!r}"
    if not target.is_file():
        return None, f"{page.relative_to(root)}: broken link {ref!r}"
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
    images = [p for r in data["rows"] for im in r["im"] for p in (im[1], im[4])]
    return links, images, None


def check_gallery(root, decode: bool = True) -> tuple[list[str], int, int]:
    """Crawl from root/index.html. Returns (problems, pages visited, images checked). decode=False only checks
    that images exist (the gallery build decodes every image it stores, so its own check skips that)."""
    from PIL import Image

    root = Path(root).resolve()
    problems, seen_pages, seen_images = [], set(), set()
    todo = [(root / "index.html").resolve()]
    if not todo[0].is_file():
        return [f"no index.html in {root}"], 0, 0
    while todo:
        page = todo.pop()
        if page in seen_pages:
            continue
        seen_pages.add(page)
        refs = _Refs()
        refs.feed(page.read_text(encoding="utf-8"))
        images = list(refs.images)
        for src in refs.files:
            target, err = _resolve(page, src, root)
            if err:
                problems.append(err)
            elif target.name == "rows.js":
                links, grid_images, err = _grid_refs(target)
                problems += [err] if err else []
                refs.links += links
                images += grid_images
        for href in refs.links:
            target, err = _resolve(page, href, root)
            if err:
                problems.append(err)
            elif target.suffix == ".html":
                todo.append(target)
        for src in images:
            target, err = _resolve(page, src, root)
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
                problems.append(f"{page.relative_to(root)}: image {src!r} does not decode ({e})")
    return problems, len(seen_pages), len(seen_images)
