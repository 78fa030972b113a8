"""Store scenarios run both directly and through PgBouncer."""

from __future__ import annotations

import threading

from marketdata.providers.base import Page
from marketdata.store import CandleStore


def coverage_seen_by_a_waiter(holder: CandleStore, waiter: CandleStore, page: Page) -> list[object]:
    """`holder` takes the fill lock for BTCUSDT 1m and stores `page`; `waiter` (another connection)
    asks for the same lock meanwhile. Returns what the waiter saw once it got the lock: its coverage
    read, or the exception it met."""
    holder_has_lock = threading.Event()
    seen: list[object] = []

    def wait_for_the_lock() -> None:
        try:
            holder_has_lock.wait(10)
            with waiter.fill_transaction("BTCUSDT", "1m", wait_seconds=30) as tx:
                seen.append(tx.read_coverage(0, 10**10))
        except BaseException as exc:
            seen.append(exc)

    thread = threading.Thread(target=wait_for_the_lock)
    thread.start()
    with holder.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        holder_has_lock.set()
        tx.store_page("binance", page)
        threading.Event().wait(0.3)  # let the waiter poll a few times (the outcome does not depend on it)
    thread.join(30)
    return seen
