-- Live candles over WebSocket (issue 12): who follows which (symbol, interval), read by the broadcaster
-- once per tick. A connection's rows go on $disconnect, and when a post finds it gone (410). Times are
-- Unix seconds.

-- One row per open WebSocket connection (API Gateway's connectionId), from $connect on: the broadcaster
-- knows a connection without subscriptions, and $disconnect removes it with its subscriptions (cascade).
CREATE TABLE live_connections (
    connection_id text             NOT NULL,
    connected_at  double precision NOT NULL,
    CONSTRAINT live_connections_pkey PRIMARY KEY (connection_id),
    CONSTRAINT live_connections_id_chk CHECK (length(connection_id) BETWEEN 1 AND 128)
);

COMMENT ON TABLE live_connections IS 'Open WebSocket connections of the live API.';

-- What a connection follows; asset_class says which provider's stream serves it. At most
-- LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION rows per connection (checked in the inserting statement).
CREATE TABLE live_subscriptions (
    connection_id text             NOT NULL,
    symbol        text             NOT NULL,
    interval      text             NOT NULL,
    asset_class   text             NOT NULL,
    since         double precision NOT NULL,
    CONSTRAINT live_subscriptions_pkey PRIMARY KEY (connection_id, symbol, interval),
    CONSTRAINT live_subscriptions_connection_fkey FOREIGN KEY (connection_id)
        REFERENCES live_connections (connection_id) ON DELETE CASCADE,
    CONSTRAINT live_subscriptions_interval_chk
        CHECK (interval IN ('1m', '5m', '15m', '30m', '1H', '4H', '1D', '1W', '1M')),
    CONSTRAINT live_subscriptions_asset_class_chk CHECK (asset_class IN ('crypto', 'forex'))
);

-- The broadcaster's read: every distinct pair with its subscribers.
CREATE INDEX live_subscriptions_pair_idx ON live_subscriptions (symbol, interval);

COMMENT ON TABLE live_subscriptions IS 'Live subscriptions: a connection follows a symbol and interval.';
