"""Pure-Python gallery check: every page reachable from index.html has only relative links to existing files and
images that decode. Runs without a browser (the Chromium test checks rendering on top of this)."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a.get("src") or "")


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


def check_gallery(root) -> tuple[list[str], int, int]:
    """Crawl from root/index.html. Returns (problems, pages visited, images checked)."""
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
        for href in refs.links:
            target, err = _resolve(page, href, root)
            if err:
                problems.append(err)
            elif target.suffix == ".html":
                todo.append(target)
        for src in refs.images:
            target, err = _resolve(page, src, root)
            if err:
                problems.append(err)
                continue
            seen_images.add(target)
            try:
                with Image.open(target) as im:
                    im.load()
                    if im.width < 1 or im.height < 1:
                        problems.append(f"{src}: empty image")
            except Exception as e:  # any decode failure is a broken image
                problems.append(f"{page.relative_to(root)}: image {src!r} does not decode ({e})")
    return problems, len(seen_pages), len(seen_images)
