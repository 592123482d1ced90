-- High-epistemic regions: per forecast valid time and tile of
-- {{tile_degrees}}° × {{tile_degrees}}°, the cells, mean and max EU, the
-- fraction of cells above the EU threshold, and whether that fraction
-- reaches {{min_fraction}}. Reads table `forecast`; writes table `flags`.
WITH thresholds AS (
    SELECT valid_time, CAST({{eu_threshold}} AS DOUBLE) AS eu_threshold
    FROM forecast
    GROUP BY valid_time
),
cells AS (
    SELECT f.valid_time,
           floor(f.latitude / {{tile_degrees}}) * {{tile_degrees}}  AS tile_lat,
           floor(f.longitude / {{tile_degrees}}) * {{tile_degrees}} AS tile_lon,
           CAST(f.t2m_eu AS DOUBLE) AS eu,
           t.eu_threshold
    FROM forecast f
    JOIN thresholds t ON f.valid_time = t.valid_time
)
SELECT valid_time,
       tile_lat,
       tile_lon,
       count(*)                                           AS cells,
       avg(eu)                                            AS mean_eu,
       max(eu)                                            AS max_eu,
       avg(CASE WHEN eu > eu_threshold THEN 1.0 ELSE 0.0 END) AS frac_above,
       max(eu_threshold)                                  AS eu_threshold,
       avg(CASE WHEN eu > eu_threshold THEN 1.0 ELSE 0.0 END) >= {{min_fraction}} AS flagged
FROM cells
GROUP BY valid_time, tile_lat, tile_lon
ORDER BY valid_time, tile_lat DESC, tile_lon
