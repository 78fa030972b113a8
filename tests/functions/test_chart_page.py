"""The chart page (GET /chart) in a real browser: Debian's headless Chromium driven by Playwright, against
the local service (scripts/local_api.py's LocalApi, the code `dev.py serve --offline` runs) on a test
database and the fake upstream. Checks what a person sees: candles drawn, older bars on scrolling back,
another interval, a forex pair, an unknown symbol's message; and saves a screenshot that must not be
blank. Set UPDATE_DOCS_SCREENSHOT=1 to also write it to docs/chart-page.png.

Chromium is installed by `python3 scripts/dev.py test` (apt-get, as root); elsewhere this test fails
and says how to install it. Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from scripts.local_api import ROOT, LocalApi

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
INTERVALS = ["1m", "5m", "15m", "30m", "1H", "4H", "1D", "1W", "1M"]
UP, DOWN = (8, 153, 129), (242, 54, 69)  # the page's candle colors
WAIT_MS = 30_000


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"chromium is not installed ({CHROMIUM}): apt-get install chromium "
            "(python3 scripts/dev.py test installs it when run as root)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'", pytrace=False)
    return sync_playwright


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        previous = line
        rows.append(bytes(line) if channels == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3))
    return width, height, rows


def _count(rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    pixel = bytes(rgb)
    return sum(row[i : i + 3] == pixel for row in rows for i in range(0, len(row), 3))


def test_the_chart_page_shows_what_a_person_expects(local_api: LocalApi, tmp_path: Path):
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 720},
        )  # fmt: skip
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            sent: list[tuple[str, str | None]] = []
            page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))

            def data(name: str) -> str:
                return page.evaluate(f"document.body.dataset.{name} || ''")

            def ready(condition: str = "true") -> None:
                page.wait_for_function(
                    f"document.body.dataset.state === 'ready' && ({condition})", timeout=WAIT_MS
                )

            # BTCUSDT 1H, with a bearer token in the fragment (kept in sessionStorage, off the address bar).
            page.goto(f"{local_api.url}/chart#token=secret-123&symbol=BTCUSDT&interval=1H")
            ready()
            assert (data("symbol"), data("resolution"), data("bars")) == ("BINANCE:BTCUSDT", "1H", "500")
            status = page.inner_text("#status")
            assert "BINANCE:BTCUSDT" in status and "500 bars" in status and "UTC" in status
            assert page.locator("#intervals button").all_inner_texts() == INTERVALS
            assert "token" not in page.evaluate("location.hash")
            udf_calls = [auth for url, auth in sent if "/udf/" in url]
            assert udf_calls and set(udf_calls) == {"Bearer secret-123"}
            assert not [url for url, _ in sent if not url.startswith(local_api.url)]  # nothing from a CDN

            # What a person sees: candles of both colors and the volume, on a page that is not blank.
            page.wait_for_timeout(300)  # one animation frame or two for the canvas
            shot = tmp_path / "chart-BTCUSDT-1H.png"
            page.screenshot(path=str(shot))
            print(f"\nchart page screenshot: {shot}")
            width, height, rows = png_pixels(shot)
            assert (width, height) == (1280, 720)
            assert len({row[i : i + 3] for row in rows[::8] for i in range(0, len(row), 24)}) > 20
            assert _count(rows, UP) > 500 and _count(rows, DOWN) > 500, "no candles drawn"
            if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
                shutil.copyfile(shot, ROOT / "docs" / "chart-page.png")

            # The forming bar is polled while the newest bar is in view (crypto: every few seconds).
            assert data("pollMs") == "5000"
            page.wait_for_function("Number(document.body.dataset.polls) >= 1", timeout=WAIT_MS)

            # Scrolling back (dragging the chart to the right) loads an older page.
            oldest = int(data("oldest"))
            box = page.locator("#chart").bounding_box()
            assert box is not None
            y = box["y"] + box["height"] / 2
            for _ in range(12):
                page.mouse.move(box["x"] + 100, y)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] - 100, y, steps=8)
                page.mouse.up()
                if data("olderPages") != "0":
                    break
            page.wait_for_function("document.body.dataset.olderPages === '1'", timeout=WAIT_MS)
            ready()
            assert int(data("bars")) == 1000 and int(data("oldest")) == oldest - 500 * 3600

            # Another interval reloads: daily bars at 00:00 UTC.
            page.click("#intervals button[data-interval='1D']")
            ready("document.body.dataset.resolution === '1D'")
            assert int(data("bars")) == 500 and int(data("newest")) % 86400 == 0
            assert page.locator("#intervals button.active").inner_text() == "1D"

            # A forex pair, through the symbol search; its forming bar is polled slowly (Twelve Data credits).
            page.fill("#symbol", "EUR/USD")
            page.press("#symbol", "Enter")
            ready("document.body.dataset.symbol === 'TWELVEDATA:EUR/USD'")
            assert int(data("bars")) > 100 and data("pollMs") == "60000"
            assert "TWELVEDATA:EUR/USD" in page.inner_text("#legend")

            # An unknown symbol says so.
            page.fill("#symbol", "NOPEUSDT")
            page.press("#symbol", "Enter")
            page.wait_for_function("document.body.dataset.state === 'error'", timeout=WAIT_MS)
            assert "Unknown symbol" in page.inner_text("#status") and "NOPEUSDT" in page.inner_text("#status")

            # CORS in a real browser: a page on another origin (localhost vs 127.0.0.1) calls the API with
            # a bearer token (a preflighted request) and may read the exposed X-Cache header.
            other = local_api.url.replace("127.0.0.1", "localhost")
            status_code, x_cache = page.evaluate(
                """async (url) => {
                    const r = await fetch(url, {headers: {Authorization: "Bearer x"}});
                    return [r.status, r.headers.get("x-cache")];
                }""",
                f"{other}/udf/history?symbol=BTCUSDT&resolution=1D&to=1704067200&countback=2",
            )
            assert (status_code, x_cache in {"hit", "miss"}) == (200, True)
            assert not problems, problems
        finally:
            context.close()
