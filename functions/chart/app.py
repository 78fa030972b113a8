"""GET /chart and GET /chart/{asset}: the chart page and its files (API Gateway HTTP API, payload 2.0).

Static content only, no market data and no database: the page (static/index.html) draws candles and
volume with TradingView's Lightweight Charts, whose file ships here (static/, with its license and
notice), so it works offline, in a VPC and in tests; its data comes from /udf/* in the browser, with
`Authorization: Bearer <token>` when the user gives one, and the forming bar from the live WebSocket API
whose URL (LIVE_WEBSOCKET_URL) the page carries in `data-live-url`. The page is cached briefly; the assets are
versioned by name and cached for a year (immutable).
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field

from marketdata import http
from marketdata.config import get_settings
from marketdata.resolver import APIGatewayHttpResolver

STATIC = Path(__file__).resolve().parent / "static"
PAGE = "index.html"
PAGE_CACHE_CONTROL = "public, max-age=300"
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
#: The files /chart/{asset} serves: every versioned file in static/ (names carry the version).
ASSETS = frozenset(p.name for p in STATIC.iterdir() if p.suffix in _TYPES)

app = APIGatewayHttpResolver()
http.register_error_handlers(app)


class AssetPath(BaseModel):
    """The path parameter of /chart/{asset} (documented in openapi.json from here)."""

    asset: str = Field(description="a file name the page uses")


@cache
def _read(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


@app.get(
    "/chart",
    summary="Chart page",
    description="A page charting any listed symbol: candles and volume, symbol search, the nine intervals, "
    "UTC times; it loads older bars as you scroll left and keeps the newest bar moving while in view. "
    "Open <api>/chart#symbol=BTCUSDT&interval=1H (add &token=... behind a JWT authorizer).",
    tags=["chart"],
    operation_id="chartPage",
    responses={
        **http.ok_response(None, "The page", with_x_cache=False, content_type="text/html",
                           cache_control="five minutes"),
        **http.error_responses(503),
    },
)  # fmt: skip
def get_page():
    return http.json_response(
        _page(get_settings().live_websocket_url or ""), cache_control=PAGE_CACHE_CONTROL,
        content_type="text/html; charset=utf-8",
    )


@cache
def _page(live_url: str) -> str:
    """The page with the live API's URL in its data-live-url (empty: the page polls)."""
    return _read(PAGE).replace('data-live-url=""', f'data-live-url="{html.escape(live_url, quote=True)}"', 1)


@app.get(
    "/chart/<asset>",
    summary="Chart page asset",
    description="A versioned file of the chart page (the Lightweight Charts script, its license and notice).",
    tags=["chart"],
    operation_id="chartAsset",
    responses={
        **http.ok_response(None, "The file", with_x_cache=False, content_type=tuple(_TYPES.values()),
                           cache_control="a year, immutable (the name carries the version)"),
        **http.error_responses(404, 503, descriptions={404: "No such file"}),
    },
)  # fmt: skip
@http.params(app, path=AssetPath)
def get_asset(asset: str):
    if asset not in ASSETS:
        message = f"no chart asset {asset[:60]!r}: the page names the files it uses"
        return http.error_response(http.ApiError(404, message, "asset"))
    return http.json_response(
        _read(asset), cache_control=ASSET_CACHE_CONTROL, content_type=_TYPES[Path(asset).suffix]
    )


lambda_handler = http.lambda_entry(app, operation="chart")
