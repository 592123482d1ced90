-- Each month's uncertainty budget, read by the forecast table's year/month
-- partitions: mean aleatoric (AU) and epistemic (EU) variance, EU's share
-- of the predictive variance, and the cells where EU exceeds AU.
-- Table: forecast (a run's forecast/ folder).
--   uqcast sql -f queries/uncertainty_by_month.sql --table forecast=out/era5_t2m_6h/forecast
SELECT year,
       month,
       count(DISTINCT valid_time)                                  AS steps,
       avg(t2m_au)                                                 AS mean_au_k2,
       avg(t2m_eu)                                                 AS mean_eu_k2,
       sum(t2m_eu) / sum(t2m_au + t2m_eu)                          AS eu_share,
       avg(CASE WHEN t2m_eu > t2m_au THEN 1.0 ELSE 0.0 END)        AS frac_eu_above_au
FROM forecast
GROUP BY year, month
ORDER BY year, month;
