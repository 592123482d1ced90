-- Forecast steps whose epistemic uncertainty peaks far above the usual:
-- inputs unlike anything the model learned from (a damaged or implausible
-- field, a regime it never saw), to check before trusting their forecast.
-- Per valid time, the highest EU of any cell, the tile it is in, and its
-- ratio to the median step's peak; the steps at 3 times or more (and above
-- zero: a model whose members agree everywhere has no outliers), worst first.
-- The usual steps are the whole table's; for those of the 30 days up to each
-- step, make the frame `RANGE BETWEEN INTERVAL '30 days' PRECEDING AND
-- CURRENT ROW` (`steps` then counts them).
-- `uqcast run` warns of each step it writes that this lists, once the usual
-- steps are 8 or more (a pipeline's `flags.eu_outliers` changes the 3, the
-- 8 and the frame). Table: flags (a run's flags/ folder).
--   uqcast sql -f queries/eu_outlier_steps.sql --table flags=out/era5_t2m_6h/flags
WITH peaks AS (
    SELECT valid_time,
           max(max_eu)                                AS peak_eu_k2,
           first_value(tile_lat ORDER BY max_eu DESC) AS tile_lat,
           first_value(tile_lon ORDER BY max_eu DESC) AS tile_lon
    FROM flags
    GROUP BY valid_time
),
usual AS (
    SELECT valid_time,
           median(peak_eu_k2) OVER usual_steps AS median_peak_eu_k2,
           count(*) OVER usual_steps           AS steps
    FROM peaks
    WINDOW usual_steps AS (
        ORDER BY valid_time RANGE BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
    )
)
SELECT valid_time,
       tile_lat,
       tile_lon,
       peak_eu_k2,
       peak_eu_k2 / median_peak_eu_k2 AS times_median,
       median_peak_eu_k2,
       steps
FROM peaks JOIN usual USING (valid_time)
WHERE peak_eu_k2 > 0 AND peak_eu_k2 >= 3 * median_peak_eu_k2
ORDER BY times_median DESC;
