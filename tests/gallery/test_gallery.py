import shutil
from urllib.parse import unquote
from pathlib import Path

import pytest

from digin.gallery import check_gallery, write_gallery
from digin.gallery.html import loss_curve_svg


def test_gallery_pages_links_and_images(tmp_path, synthetic_records):
    index = write_gallery(synthetic_records, tmp_path / "g")
    problems, pages, images = check_gallery(tmp_path / "g")
    assert problems == []
    assert pages == 1 + 2 + 3  # top index, 2 task indexes, 3 group pages
    assert images == 3 * 3 + 1 + 2  # uvce: orig/sd/ours x3 + one mask; diff: sd, ours
    text = (tmp_path / "g" / "uvce" / "15_to_150.html").read_text()
    assert "Black/white &lt;Vireo&gt;" in text and "<Vireo>" not in text  # labels are escaped
    assert "<svg" in text and "polyline" in text
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    diff_page = (tmp_path / "g" / "diff" / "3_3.html").read_text()
    assert "missing" in diff_page  # no orig for classifier differences: a placeholder, not a broken image


def test_check_finds_broken_links_and_images(tmp_path, synthetic_records):
    write_gallery(synthetic_records, tmp_path / "g")
    page = tmp_path / "g" / "uvce" / "index.html"
    page.write_text(page.read_text().replace("</ul>", '<li><a href="nope.html">x</a></li>'
                                             '<li><a href="https://example.com/">y</a></li></ul>'))
    img = next((tmp_path / "g" / "diff" / "img").glob("*.png"))
    img.write_bytes(b"not a png")
    problems, _, _ = check_gallery(tmp_path / "g")
    assert any("broken link 'nope.html'" in p for p in problems)
    assert any("not a relative file link" in p for p in problems)
    assert any("does not decode" in p for p in problems)


def test_loss_curve_svg():
    svg = loss_curve_svg([4.0, 2.0, 1.0])
    assert svg.count(",") == 3 and "4" in svg and svg.startswith("<svg")
    assert "no loss curve" in loss_curve_svg(None) and "no loss curve" in loss_curve_svg([float("inf")])


def chrome_driver(tmp_path):
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Chromium not installed (/usr/bin/chromium, /usr/bin/chromedriver): "
                    "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def test_gallery_in_headless_chromium(tmp_path, synthetic_records):
    root = tmp_path / "g"
    write_gallery(synthetic_records, root)
    driver = chrome_driver(tmp_path)
    try:
        todo, seen, n_images = [(root / "index.html").resolve()], set(), 0
        while todo:
            page = todo.pop()
            if page in seen:
                continue
            seen.add(page)
            driver.get(page.as_uri())
            assert driver.title, page
            for w in driver.execute_script(
                    "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                    "i.naturalWidth])"):
                assert w[1] and w[2] > 0, f"{page.name}: image {w[0]} did not load"
                n_images += 1
            for href in driver.execute_script(
                    "return Array.from(document.links).map(a => a.href)"):
                assert href.startswith("file://"), href
                target = Path(unquote(href[len("file://"):].split("#")[0]))
                assert target.is_file(), f"{page.name}: broken link {href}"
                if target.suffix == ".html":
                    todo.append(target.resolve())
        assert len(seen) == 6 and n_images == 12
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chrome-profile", ignore_errors=True)
