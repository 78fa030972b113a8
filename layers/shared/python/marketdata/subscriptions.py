"""Live subscriptions in Postgres (migrations/0004_live_subscriptions.sql): who follows which pair.

The WebSocket handler (marketdata.live) writes them, the broadcaster (marketdata.broadcast) reads them
once per tick. Every operation is one statement on a `CandleStore`'s connection, so it shares the
store's connection handling (lazy open, one reconnect, DatabaseUnavailable for any failure, nothing that
pins a pooler session).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from marketdata.errors import TooManySubscriptions
from marketdata.intervals import Interval, parse_interval
from marketdata.schemas import AssetClass

if TYPE_CHECKING:
    from marketdata.store import CandleStore

_CONNECT = """
INSERT INTO live_connections (connection_id, connected_at) VALUES (:id, CAST(:now AS float8))
ON CONFLICT (connection_id) DO NOTHING
"""
_DISCONNECT = """
DELETE FROM live_connections
WHERE connection_id IN (SELECT json_array_elements_text(CAST(:ids AS json)))
"""
# One statement: the connection row (in case $connect's was lost), the count held, the insert when below
# the bound. Two subscribes of one connection racing each other may both pass the count (one over the
# bound at most); a client sends its messages one after another, so that is left to happen.
_SUBSCRIBE = """
WITH conn AS (
    INSERT INTO live_connections (connection_id, connected_at) VALUES (:id, CAST(:now AS float8))
    ON CONFLICT (connection_id) DO NOTHING
), held AS (
    SELECT count(*) AS n,
           bool_or(symbol = :symbol AND interval = :interval) AS already
    FROM live_subscriptions WHERE connection_id = :id
), added AS (
    INSERT INTO live_subscriptions (connection_id, symbol, interval, asset_class, since)
    SELECT :id, :symbol, :interval, :asset_class, CAST(:now AS float8) FROM held
    WHERE held.n < CAST(:max AS integer) AND NOT coalesce(held.already, false)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT held.n, coalesce(held.already, false), (SELECT count(*) FROM added) FROM held
"""
_UNSUBSCRIBE = """
WITH gone AS (
    DELETE FROM live_subscriptions
    WHERE connection_id = :id AND symbol = :symbol AND interval = :interval
    RETURNING 1
)
SELECT (SELECT count(*) FROM live_subscriptions WHERE connection_id = :id) - (SELECT count(*) FROM gone)
"""
_OF_CONNECTION = """
SELECT symbol, interval FROM live_subscriptions WHERE connection_id = :id ORDER BY since, symbol, interval
"""
_PAIRS = """
SELECT symbol, interval, asset_class, json_agg(connection_id ORDER BY connection_id)::text
FROM live_subscriptions GROUP BY symbol, interval, asset_class ORDER BY symbol, interval
"""


@dataclass(frozen=True, slots=True)
class Pair:
    """One distinct subscribed (symbol, interval) and the connections that follow it."""

    symbol: str
    interval: Interval
    asset_class: AssetClass
    connections: tuple[str, ...]

    @property
    def key(self) -> tuple[str, Interval]:
        return (self.symbol, self.interval)


class Subscriptions:
    """The live_connections and live_subscriptions tables, over a store's connection."""

    def __init__(self, store: CandleStore) -> None:
        self._store = store

    def connect(self, connection_id: str, now: float) -> None:
        self._store._run(_CONNECT, {"id": connection_id, "now": float(now)})

    def disconnect(self, *connection_ids: str) -> None:
        """Forget connections and everything they follow (no error for unknown ones)."""
        if connection_ids:
            self._store._run(_DISCONNECT, {"ids": json.dumps(list(connection_ids))})

    def subscribe(
        self, connection_id: str, symbol: str, interval: Interval, asset_class: AssetClass, now: float, *,
        limit: int,
    ) -> int:
        """Follow the pair (a repeat is no error); the number of pairs the connection follows now.
        TooManySubscriptions when it already follows `limit` others."""
        params = {
            "id": connection_id, "symbol": symbol, "interval": interval.value,
            "asset_class": asset_class.value, "now": float(now), "max": int(limit),
        }
        rows, _ = self._store._run(_SUBSCRIBE, params)
        held, already, added = int(rows[0][0]), bool(rows[0][1]), int(rows[0][2])
        if not already and not added:
            raise TooManySubscriptions(limit)
        return held + added

    def unsubscribe(self, connection_id: str, symbol: str, interval: Interval) -> int:
        """Stop following the pair (no error when it was not followed); the number of pairs left."""
        params = {"id": connection_id, "symbol": symbol, "interval": interval.value}
        rows, _ = self._store._run(_UNSUBSCRIBE, params)
        return int(rows[0][0])

    def of_connection(self, connection_id: str) -> list[tuple[str, Interval]]:
        """The pairs one connection follows, oldest subscription first."""
        rows, _ = self._store._run(_OF_CONNECTION, {"id": connection_id})
        return [(str(symbol), parse_interval(interval)) for symbol, interval in rows]

    def pairs(self) -> list[Pair]:
        """Every distinct subscribed pair with its connections (the broadcaster's read, one statement)."""
        rows, _ = self._store._run(_PAIRS)
        return [
            Pair(str(symbol), parse_interval(interval), AssetClass(asset_class), tuple(json.loads(ids)))
            for symbol, interval, asset_class, ids in rows
        ]


def connection_ids(pairs: Iterable[Pair]) -> set[str]:
    """Every connection that follows at least one of `pairs`."""
    return {connection for pair in pairs for connection in pair.connections}
