-- The tiles most often flagged for high epistemic uncertainty (the model
-- has not seen inputs like these), with their worst EU: where a forecast
-- needs a second look. Table: flags (a run's flags/ folder).
--   uqcast sql -f queries/high_eu_regions.sql --table flags=out/era5_t2m_6h/flags
SELECT tile_lat,
       tile_lon,
       count(*) FILTER (WHERE flagged)          AS flagged_steps,
       count(*)                                 AS steps,
       max(max_eu)                              AS worst_eu_k2,
       max(valid_time) FILTER (WHERE flagged)   AS last_flagged
FROM flags
GROUP BY tile_lat, tile_lon
HAVING count(*) FILTER (WHERE flagged) > 0
ORDER BY flagged_steps DESC, worst_eu_k2 DESC
LIMIT 20;
