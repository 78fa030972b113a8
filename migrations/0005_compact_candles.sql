-- Compact candles (issue 9): a bar in at most 100 bytes with its index, instead of 142.
--
-- The layout
--   series   one row per (symbol, interval): a small integer id, and the provider of its bars (NULL for a
--            series this migration found with coverage but no bar: coverage never recorded one).
--   candles  (series_id int4, open_minute int4, open, high, low, close, volume float8): the open time in
--            whole minutes since the epoch (every interval opens on a whole minute; int4 minutes reach
--            past the year 3000 bound, int4 seconds would end in 2038). Two 4-byte keys first, then the
--            8-byte doubles: no alignment padding. A row is 24 bytes of tuple header + 48 of data + a
--            4-byte line pointer (76.6 bytes per bar on 8 kB pages); the primary key (series_id,
--            open_minute), still the only index, is 8 bytes of key + 8 of index tuple header + 4 (22.6
--            bytes per bar at the leaf fill factor of 90). 99.1 bytes per bar (bench/bench_storage.py), for
--            bars stored forward in time and for this migration's copy; stretches stored backward (pages
--            before older ones) leave a part-filled leaf at each page boundary, 105.4, until a
--            `REINDEX INDEX CONCURRENTLY candles_pkey` packs them to 99.1 again.
--            Prices stay double precision: answers round-trip the stored doubles exactly.
--            The options measured on 1M bars in this order: this layout 99.2 bytes per bar; the same with
--            bigint seconds 116.1 (8 more bytes of heap, and of padded index key); with the key at index
--            fillfactor 100, 97.1 forward but 109.4 backward, so the default fill factor stays.
--   coverage (series_id, start_time, end_time): as ohlcv_coverage, keyed by the series id.
-- No foreign keys: candles and coverage are only ever written through the series lookup of the same
-- statement (marketdata.store), series rows are never deleted, and a per-row foreign key check would
-- cost every insert. Series ids are chosen by the store without a sequence (nextval pins RDS Proxy
-- sessions): a hash of the series, probed upward on a collision; here they are numbered 1..n.
-- open_bars, rejected_symbols and provider_limits keep their keys: they are small, keyed lookups, and
-- two of them are not per series.
--
-- Safe while the functions serve (old and new code at once during a deploy)
--   The whole file is one transaction (marketdata.migrate), so nobody sees a half-migrated cache.
--   1. The bulk copy reads ohlcv_cache under ACCESS SHARE only: old code keeps reading and writing it.
--      The primary key is built after the copy (one sort, leaf pages packed), not row by row.
--   2. Bars old code committed after the copy began (their xmin is newer than the snapshot taken before
--      it) are copied again under LOCK ... IN EXCLUSIVE MODE, which waits for the writers then running
--      and holds new ones (readers go on) for the few seconds of that delta and of the coverage copy.
--      A held writer waits at most its statement timeout, then answers from the provider uncached.
--   3. The old tables are dropped and replaced by read-only views of the same name and columns
--      (ohlcv_cache, ohlcv_coverage): old code still reading during the deploy gets the same rows
--      (unindexed on open_time: slower, correct); its writes fail (a view takes no ON CONFLICT), which it
--      handles as a database failure: it answers from the provider and caches nothing until replaced.
--      The drop takes ACCESS EXCLUSIVE at the very end: readers wait for the transactions already
--      holding the tables and for the commit right after, no longer.
--   New code started before this migration finds no `series` table and answers from the providers.
-- Speed: 10 million bars in 103 s (97,000 bars/s) on a shared 2-core machine (bench/bench_storage.py,
-- part migrate; bench/README.md): one INSERT ... SELECT (a sequential scan and a hash join on the
-- series; the heap inserts and their WAL are most of it), then one index build, rather than batches,
-- because batches inside one transaction shorten no lock and the copy's only lock (ACCESS SHARE) blocks
-- nobody. marketdata.migrate lifts the statement and socket timeouts for the file.

CREATE TABLE series (
    id        integer NOT NULL,
    symbol    text    NOT NULL,
    interval  text    NOT NULL,
    provider  text,
    CONSTRAINT series_pkey PRIMARY KEY (id),
    CONSTRAINT series_symbol_interval_key UNIQUE (symbol, interval),
    CONSTRAINT series_id_chk CHECK (id > 0),
    CONSTRAINT series_symbol_chk CHECK (length(symbol) BETWEEN 1 AND 32),
    CONSTRAINT series_interval_chk CHECK (interval IN ('1m', '5m', '15m', '30m', '1H', '4H', '1D', '1W', '1M')),
    CONSTRAINT series_provider_chk CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$')
);

COMMENT ON TABLE series IS 'One row per (symbol, interval) with bars or coverage: the id candles and coverage use.';

CREATE TABLE candles (
    series_id   integer          NOT NULL,
    open_minute integer          NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL,
    -- Whole minutes between 1970 and 3000 (32503680000 s / 60).
    CONSTRAINT candles_open_minute_chk CHECK (open_minute >= 0 AND open_minute < 541728000),
    -- x < 'Infinity' is false for +Infinity and for NaN (Postgres sorts NaN above every number).
    CONSTRAINT candles_finite_chk CHECK (
        open  > '-Infinity' AND open  < 'Infinity' AND
        high  > '-Infinity' AND high  < 'Infinity' AND
        low   > '-Infinity' AND low   < 'Infinity' AND
        close > '-Infinity' AND close < 'Infinity' AND
        volume < 'Infinity'
    ),
    CONSTRAINT candles_ohlc_chk CHECK (
        low >= 0 AND low <= high
        AND open BETWEEN low AND high
        AND close BETWEEN low AND high
    ),
    CONSTRAINT candles_volume_chk CHECK (volume >= 0)
);

COMMENT ON TABLE candles IS 'Closed OHLCV bars fetched from a provider; open_minute = open time in Unix seconds / 60.';

CREATE TABLE coverage (
    series_id   integer NOT NULL,
    start_time  bigint  NOT NULL,
    end_time    bigint  NOT NULL,
    CONSTRAINT coverage_pkey PRIMARY KEY (series_id, start_time),
    CONSTRAINT coverage_range_chk CHECK (start_time >= 0 AND start_time <= end_time AND end_time < 32503680000)
);

COMMENT ON TABLE coverage IS 'Open-time ranges [start_time, end_time] of a series fetched completely; merged on write.';

-- Transactions from this xid on may have committed bars after the bulk copy's snapshot (step 2).
CREATE TEMPORARY TABLE migration_0005_mark ON COMMIT DROP AS
SELECT CAST(CAST(txid_snapshot_xmin(txid_current_snapshot()) % 4294967296 AS text) AS xid) AS since;

-- The series of ohlcv_cache, found by walking its primary key (one index probe per series), with the
-- provider of their first bar; then those only coverage knows. Run again after the lock for late ones.
INSERT INTO series (id, symbol, interval, provider)
WITH RECURSIVE k(symbol, interval, provider) AS (
    (SELECT symbol, interval, provider FROM ohlcv_cache ORDER BY symbol, interval LIMIT 1)
    UNION ALL
    SELECT n.symbol, n.interval, n.provider
    FROM k, LATERAL (
        SELECT c.symbol, c.interval, c.provider FROM ohlcv_cache c
        WHERE (c.symbol, c.interval) > (k.symbol, k.interval)
        ORDER BY c.symbol, c.interval LIMIT 1
    ) AS n
), found AS (
    SELECT symbol, interval, provider FROM k
    UNION ALL
    SELECT DISTINCT symbol, interval, NULL FROM ohlcv_coverage v
    WHERE NOT EXISTS (SELECT 1 FROM ohlcv_cache c WHERE c.symbol = v.symbol AND c.interval = v.interval)
)
SELECT row_number() OVER (ORDER BY symbol, interval), symbol, interval, provider FROM found;

INSERT INTO candles (series_id, open_minute, open, high, low, close, volume)
SELECT s.id, CAST(c.open_time / 60 AS integer), c.open, c.high, c.low, c.close, c.volume
FROM ohlcv_cache c JOIN series s ON s.symbol = c.symbol AND s.interval = c.interval;

ALTER TABLE candles ADD CONSTRAINT candles_pkey PRIMARY KEY (series_id, open_minute);

-- Step 2: no more writers on the old tables; readers go on.
LOCK TABLE ohlcv_cache, ohlcv_coverage IN EXCLUSIVE MODE;

INSERT INTO series (id, symbol, interval, provider)
WITH late AS (
    SELECT DISTINCT ON (c.symbol, c.interval) c.symbol, c.interval, c.provider FROM ohlcv_cache c
    WHERE age(c.xmin) <= (SELECT age(since) FROM migration_0005_mark)
    ORDER BY c.symbol, c.interval
), found AS (
    SELECT symbol, interval, provider FROM late
    UNION ALL
    SELECT DISTINCT symbol, interval, NULL FROM ohlcv_coverage v
    WHERE NOT EXISTS (SELECT 1 FROM late l WHERE l.symbol = v.symbol AND l.interval = v.interval)
)
SELECT (SELECT COALESCE(max(id), 0) FROM series) + row_number() OVER (ORDER BY symbol, interval),
       symbol, interval, provider
FROM found f
WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.symbol = f.symbol AND s.interval = f.interval);

INSERT INTO candles (series_id, open_minute, open, high, low, close, volume)
SELECT s.id, CAST(c.open_time / 60 AS integer), c.open, c.high, c.low, c.close, c.volume
FROM ohlcv_cache c JOIN series s ON s.symbol = c.symbol AND s.interval = c.interval
WHERE age(c.xmin) <= (SELECT age(since) FROM migration_0005_mark)
ON CONFLICT (series_id, open_minute) DO NOTHING;

INSERT INTO coverage (series_id, start_time, end_time)
SELECT s.id, v.start_time, v.end_time
FROM ohlcv_coverage v JOIN series s ON s.symbol = v.symbol AND s.interval = v.interval;

-- Step 3.
DROP TABLE ohlcv_cache, ohlcv_coverage;

CREATE VIEW ohlcv_cache AS
SELECT s.symbol, s.interval, CAST(c.open_minute AS bigint) * 60 AS open_time, s.provider,
       c.open, c.high, c.low, c.close, c.volume
FROM candles c JOIN series s ON s.id = c.series_id;

COMMENT ON VIEW ohlcv_cache IS 'candles with the columns of the layout before 0005 (read-only; for people and old readers).';

CREATE VIEW ohlcv_coverage AS
SELECT s.symbol, s.interval, v.start_time, v.end_time
FROM coverage v JOIN series s ON s.id = v.series_id;

COMMENT ON VIEW ohlcv_coverage IS 'coverage with the columns of the layout before 0005 (read-only).';

-- Statistics for the planner now, not at the next autovacuum.
ANALYZE series;
ANALYZE candles;
ANALYZE coverage;
