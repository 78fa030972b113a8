-- The cache schema: candles, the ranges fetched completely (coverage), and the symbol lists.
-- Times are Unix seconds (UTC) of bar open times. No sequences anywhere: natural keys only, so nothing
-- in the runtime path calls nextval (which pins RDS Proxy sessions).

-- Closed bars only. The primary key (symbol, interval, open_time) is the one index: it serves the
-- uniqueness guarantee, ON CONFLICT, and every read (equality on symbol+interval, range on open_time).
CREATE TABLE ohlcv_cache (
    symbol      text             NOT NULL,
    interval    text             NOT NULL,
    open_time   bigint           NOT NULL,
    provider    text             NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL DEFAULT 0,
    CONSTRAINT ohlcv_cache_pkey PRIMARY KEY (symbol, interval, open_time),
    CONSTRAINT ohlcv_cache_symbol_chk CHECK (length(symbol) BETWEEN 1 AND 32),
    CONSTRAINT ohlcv_cache_interval_chk CHECK (interval IN ('1m', '5m', '15m', '30m', '1H', '4H', '1D', '1W', '1M')),
    CONSTRAINT ohlcv_cache_provider_chk CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    -- Whole minutes between 1970 and 3000: a millisecond timestamp or a fractional one never gets in.
    CONSTRAINT ohlcv_cache_open_time_chk CHECK (open_time >= 0 AND open_time < 32503680000 AND open_time % 60 = 0),
    -- x < 'Infinity' is false for +Infinity and for NaN (Postgres sorts NaN above every number).
    CONSTRAINT ohlcv_cache_finite_chk CHECK (
        open  > '-Infinity' AND open  < 'Infinity' AND
        high  > '-Infinity' AND high  < 'Infinity' AND
        low   > '-Infinity' AND low   < 'Infinity' AND
        close > '-Infinity' AND close < 'Infinity' AND
        volume < 'Infinity'
    ),
    CONSTRAINT ohlcv_cache_ohlc_chk CHECK (
        low >= 0 AND low <= high
        AND open BETWEEN low AND high
        AND close BETWEEN low AND high
    ),
    CONSTRAINT ohlcv_cache_volume_chk CHECK (volume >= 0)
);

COMMENT ON TABLE ohlcv_cache IS 'Closed OHLCV bars fetched from a provider; open_time in Unix seconds UTC.';

-- Ranges of open times (inclusive) fetched completely from the provider for one (symbol, interval):
-- a bar missing inside a covered range does not exist upstream (weekend, halt, before listing).
-- Written in the same transaction as the bars of the page, and merged on write (adjacent and
-- overlapping ranges become one row), so a fully backfilled series is a single row.
CREATE TABLE ohlcv_coverage (
    symbol      text   NOT NULL,
    interval    text   NOT NULL,
    start_time  bigint NOT NULL,
    end_time    bigint NOT NULL,
    CONSTRAINT ohlcv_coverage_pkey PRIMARY KEY (symbol, interval, start_time),
    CONSTRAINT ohlcv_coverage_symbol_chk CHECK (length(symbol) BETWEEN 1 AND 32),
    CONSTRAINT ohlcv_coverage_interval_chk CHECK (interval IN ('1m', '5m', '15m', '30m', '1H', '4H', '1D', '1W', '1M')),
    CONSTRAINT ohlcv_coverage_range_chk CHECK (start_time >= 0 AND start_time <= end_time AND end_time < 32503680000)
);

COMMENT ON TABLE ohlcv_coverage IS 'Open-time ranges [start_time, end_time] fetched completely; merged on write.';

-- The provider's symbol list per asset class, with the time it was fetched (for the time to live).
CREATE TABLE symbol_lists (
    asset_class text        NOT NULL,
    symbols     text[]      NOT NULL,
    fetched_at  timestamptz NOT NULL,
    CONSTRAINT symbol_lists_pkey PRIMARY KEY (asset_class),
    CONSTRAINT symbol_lists_asset_class_chk CHECK (asset_class IN ('crypto', 'forex')),
    CONSTRAINT symbol_lists_symbols_chk CHECK (array_position(symbols, NULL) IS NULL)
);

COMMENT ON TABLE symbol_lists IS 'Cached provider symbol lists per asset class.';
