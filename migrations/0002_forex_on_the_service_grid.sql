-- Forex (Twelve Data) as the provider really serves it.
--
-- 1. Forex 4H, 1W and 1M are now built from cached 1H and 1D bars (the provider's own 4h bars lie off
--    the UTC grid, and its forex week and month labels are unverified), so rows and coverage stored
--    under those intervals by the first release are never read again: remove them.
-- 2. The first release read Twelve Data's "unknown pair" and "not in your plan" answers (code 404) as
--    "no bars here" and recorded the range as covered, so a typo was remembered as "no data, ever". A
--    real pair always has bars somewhere in what was fetched for it; a forex symbol with coverage and
--    not a single bar is such a mistake: forget its coverage, so the next request asks again and gets
--    the right error. (A real pair that was only ever asked for an empty weekend costs one request.)
--
-- Forex symbols are the ones containing '/'. Cheap on a large cache: the distinct symbols are found by
-- walking the primary key (a loose index scan), and every delete goes through it.

WITH RECURSIVE symbols(symbol) AS (
    (SELECT symbol FROM ohlcv_cache ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT c.symbol FROM ohlcv_cache c WHERE c.symbol > s.symbol ORDER BY c.symbol LIMIT 1)
    FROM symbols s
    WHERE s.symbol IS NOT NULL
)
DELETE FROM ohlcv_cache c
USING symbols s
WHERE s.symbol LIKE '%/%' AND c.symbol = s.symbol AND c.interval IN ('4H', '1W', '1M');

DELETE FROM ohlcv_coverage
WHERE symbol LIKE '%/%' AND interval IN ('4H', '1W', '1M');

DELETE FROM ohlcv_coverage c
WHERE c.symbol LIKE '%/%'
  AND NOT EXISTS (SELECT 1 FROM ohlcv_cache b WHERE b.symbol = c.symbol);
