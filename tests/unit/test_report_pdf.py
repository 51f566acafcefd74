"""The full report's PDF, checked the way a reader sees it: every page rasterised with pypdfium2.

WeasyPrint is slow, so the report is laid out ONCE (a module fixture) and every test reads that file.
The page images are kept as artifacts under the fixture's tmp folder; the tests print where.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from pypdf import PdfReader

from quanto.reports import render_report
from tests.unit.test_reports import TITLE, _full_data

# The report with every section lays out on 7 A4 pages today; a lost page break or a section that
# suddenly grows (a table printed twice, a chart at 10x its size) moves the count out of this range.
PAGE_RANGE = range(6, 9)
MM = 72 / 25.4  # PDF points per millimetre
# report.css: @page margins 15mm top, 14mm right, 17mm bottom, 14mm left.
LEFT, RIGHT = 14 * MM, 14 * MM
BOTTOM = 17 * MM
TOLERANCE = 1.0  # points: glyph boxes may poke a hair beyond the line box
# Charts drawn for `_full_data`: equity, drawdown, returns, trades, rolling Sharpe, rolling volatility,
# exposure, confusion matrix, ROC, PBO, feature importance.
N_CHARTS = 11
# The last column header of each wide table (uppercased by the stylesheet): if a table were wider than
# the page, its last column would be cut off or pushed outside the page box.
LAST_HEADERS = {
    "monthly returns": "TOTAL",
    "bootstrap": "WORST 1%",
    "canary folds": "Z (ACCURACY)",
    "cpcv paths": "SHARPE RATIO",
    "model search": "STATE",
    "out-of-sample evaluation": "BEATS ALL",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The PDF of `_full_data()`, its page images (PNG artifacts) and their grayscale pixels."""
    out = tmp_path_factory.mktemp("report_pdf")
    pdf_path = render_report(_full_data(), out, ["pdf"])["pdf"]
    pages_dir = out / "pages"
    pages_dir.mkdir()
    doc = pdfium.PdfDocument(pdf_path)
    gray = []
    for i in range(len(doc)):
        image = doc[i].render(scale=1.5).to_pil()
        image.save(pages_dir / f"page-{i + 1:02d}.png")
        gray.append(np.asarray(image.convert("L"), dtype=float))
    return {"path": pdf_path, "pages_dir": pages_dir, "doc": doc, "gray": gray}


def test_page_count(report: dict):
    print(f"report page images: {report['pages_dir']}")
    n = len(report["doc"])
    assert n in PAGE_RANGE, f"{n} pages, expected {PAGE_RANGE.start}..{PAGE_RANGE.stop - 1}"
    pages: list[Path] = sorted(report["pages_dir"].iterdir())
    assert [p.name for p in pages] == [f"page-{i:02d}.png" for i in range(1, n + 1)]
    assert all(p.stat().st_size > 10_000 for p in pages)  # rendered pages, not empty files
    text = [page.extract_text() for page in PdfReader(report["path"]).pages]
    assert TITLE in text[0]
    for i, page_text in enumerate(text, start=1):
        assert f"Page {i} of {n}" in page_text


def test_every_page_carries_content(report: dict):
    print(f"report page images: {report['pages_dir']}")
    for i, pixels in enumerate(report["gray"], start=1):
        # Above the footer: a page holding nothing but "Page i of n" is near-white there.
        body = pixels[: int(pixels.shape[0] * (1 - BOTTOM / report["doc"][i - 1].get_height()))]
        assert body.std() > 10, f"page {i} is blank (pixel std {body.std():.1f})"
        assert (body < 128).mean() > 0.003, f"page {i} has almost no dark ink"


def _inside(box: tuple[float, float, float, float], width: float, height: float) -> bool:
    left, bottom, right, top = box
    return (
        left >= LEFT - TOLERANCE
        and right <= width - RIGHT + TOLERANCE
        and bottom >= -TOLERANCE
        and top <= height + TOLERANCE
    )


def test_nothing_overflows_the_page(report: dict):
    print(f"report page images: {report['pages_dir']}")
    doc = report["doc"]
    for i in range(len(doc)):
        page = doc[i]
        width, height = page.get_size()
        text = page.get_textpage()
        outside = [
            text.get_text_range(k, 1)
            for k in range(text.count_chars())
            if text.get_text_range(k, 1).strip() and not _inside(text.get_charbox(k), width, height)
        ]
        assert not outside, f"page {i + 1}: text outside the margins: {''.join(outside)[:80]!r}"
    # The widest tables' last columns made it onto the page (and, by the loop above, inside it).
    words = " ".join(page.extract_text() for page in PdfReader(report["path"]).pages)
    for table, header in LAST_HEADERS.items():
        assert header in words, f"{table}: last column header {header!r} missing"


def test_charts_are_embedded_images(report: dict):
    print(f"report page images: {report['pages_dir']}")
    doc = report["doc"]
    placed = []
    for i in range(len(doc)):
        page = doc[i]
        width, height = page.get_size()
        for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=4):
            assert _inside(image.get_bounds(), width, height), f"page {i + 1}: a chart outside the margins"
            placed.append((i + 1, image.get_px_size()))
    assert len(placed) == N_CHARTS
    # Page 1: the equity curve and the drawdown, at full text width (990 px = 9 in at 110 dpi).
    assert [size[0] for page, size in placed if page == 1] == [990, 990]
    assert all(w >= 300 and h >= 200 for _, (w, h) in placed)  # real charts, not icons
    # Each chart is its own image object in the file (no chart lost, none duplicated).
    images = set()
    for page in PdfReader(report["path"]).pages:
        for ref in page["/Resources"].get("/XObject", {}).values():
            if ref.get_object()["/Subtype"] == "/Image":
                images.add(ref.idnum)
    assert len(images) == N_CHARTS
