-- State every Lambda shares so that the cost of any caller stays bounded (marketdata.limits):
-- provider quotas and bans, the still-open bar fetched once for all callers, symbols a provider rejected.
-- Each is read and written with single statements (no session state: pooler-safe). Times are Unix
-- seconds (double precision: sub-second TTLs).

-- One row per provider: requests counted in the current UTC minute and day, and the instant before which
-- nobody may call it (a Binance 418 ban's end, a 429's Retry-After).
CREATE TABLE provider_limits (
    provider      text             NOT NULL,
    minute_start  bigint           NOT NULL DEFAULT 0,
    minute_used   integer          NOT NULL DEFAULT 0,
    day_start     bigint           NOT NULL DEFAULT 0,
    day_used      integer          NOT NULL DEFAULT 0,
    blocked_until double precision NOT NULL DEFAULT 0,
    CONSTRAINT provider_limits_pkey PRIMARY KEY (provider),
    CONSTRAINT provider_limits_provider_chk CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    CONSTRAINT provider_limits_used_chk CHECK (minute_used >= 0 AND day_used >= 0)
);

COMMENT ON TABLE provider_limits IS 'Provider requests per UTC minute/day and bans, shared by every Lambda.';

-- The still-open bar of a series, as last fetched (never a closed bar: those live in ohlcv_cache).
-- claimed_until: a caller is fetching it until then; others serve what is here meanwhile.
CREATE TABLE open_bars (
    symbol        text             NOT NULL,
    interval      text             NOT NULL,
    fetched_at    double precision NOT NULL DEFAULT 0,
    claimed_until double precision NOT NULL DEFAULT 0,
    open_time     bigint,
    open          double precision,
    high          double precision,
    low           double precision,
    close         double precision,
    volume        double precision,
    CONSTRAINT open_bars_pkey PRIMARY KEY (symbol, interval)
);

COMMENT ON TABLE open_bars IS 'Last fetched still-open bar per series, shared for a short time to live.';

-- Symbols their provider refused: answered without asking again until `until`. reason: 'unknown' (the
-- provider does not know it: 404) or 'plan' (the deployment's Twelve Data plan does not include it: 403).
CREATE TABLE rejected_symbols (
    symbol  text             NOT NULL,
    reason  text             NOT NULL,
    until   double precision NOT NULL,
    CONSTRAINT rejected_symbols_pkey PRIMARY KEY (symbol),
    CONSTRAINT rejected_symbols_reason_chk CHECK (reason IN ('unknown', 'plan'))
);

COMMENT ON TABLE rejected_symbols IS 'Symbols refused by their provider, remembered until `until`.';
