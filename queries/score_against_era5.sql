-- Skill of each forecast valid time against the ERA5 analysis at that time:
-- latitude-weighted RMSE of the mean, mean Gaussian CRPS from the predictive
-- variance AU + EU, and the spread-skill ratio (1: reliable; below 1:
-- over-confident). k = 8 * 8 is the shipped pipeline's M × N draws per cell.
-- Tables: forecast (a run's forecast/ folder), era5 (the NetCDF input).
--   uqcast sql -f queries/score_against_era5.sql \
--     --table forecast=out/era5_t2m_6h/forecast --table era5=data/era5
SELECT f.valid_time,
       count(*)                                                        AS cells,
       weighted_rmse(f.t2m_mean, e.t2m, lat_weight(f.latitude))        AS rmse_k,
       weighted_rmse(f.t2m, e.t2m, lat_weight(f.latitude))             AS persistence_rmse_k,
       avg(crps_gaussian(e.t2m, f.t2m_mean, f.t2m_au + f.t2m_eu))      AS crps_k,
       spread_skill(e.t2m, f.t2m_mean, f.t2m_au + f.t2m_eu, 8 * 8,
                    lat_weight(f.latitude))                            AS spread_skill
FROM forecast f
JOIN era5 e
  ON e.valid_time = f.valid_time AND e.latitude = f.latitude AND e.longitude = f.longitude
GROUP BY f.valid_time
ORDER BY f.valid_time;
