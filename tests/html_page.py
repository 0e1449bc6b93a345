"""Reading back `report --html`'s page as a browser would: its images, links and tables
(html.parser), the checks that it needs nothing from outside the file, and a headless
Chromium screenshot where Chromium is installed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
DATA_PNG = "data:image/png;base64,"


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []  # each <img>'s attributes
        self.references: list[str] = []  # every src and href
        self.tables: list[list[list[str]]] = []  # cell texts by row
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.references += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def markdown_tables(path: Path) -> list[list[list[str]]]:
    """The Markdown report's tables as cell texts by row, without the --- rule."""
    tables, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("| "):
            if current is None:
                current = []
                tables.append(current)
            if not re.fullmatch(r"\|( --- \|)+", line):
                current.append([cell.strip() for cell in line.strip("|").split(" | ")])
        else:
            current = None
    return tables


def check_self_contained(page: Page) -> list[np.ndarray]:
    """Assert the page loads nothing from outside itself; return its images, decoded."""
    assert not [ref for ref in page.references if re.match(r"\s*(https?:)?//", ref, re.I)]
    assert all(ref.startswith(("#", DATA_PNG)) for ref in page.references), page.references
    decoded = []
    for image in page.images:
        assert image["src"].startswith(DATA_PNG)
        pixels = cv2.imdecode(np.frombuffer(base64.b64decode(image["src"][len(DATA_PNG):]), np.uint8),
                              cv2.IMREAD_COLOR)
        assert pixels is not None and pixels.size, image.get("alt")
        decoded.append(pixels)
    return decoded


def screenshot(page: Path, out: Path, profile: Path) -> np.ndarray:
    """The page as headless Chromium draws it, with every network feature it has turned off."""
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={profile}",
               "--window-size=1280,2400", f"--screenshot={out}", page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]
    shutil.rmtree(profile, ignore_errors=True)
    return cv2.imread(str(out))
