"""The WebSocket API ($connect, $disconnect, subscribe, unsubscribe, $default): a thin handler on the
layer's marketdata.live (validation, subscriptions in Postgres, the route response sent to the caller)."""

from __future__ import annotations

from marketdata import live

lambda_handler = live.lambda_entry()
