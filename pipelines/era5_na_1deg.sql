-- ERA5 (0.25° or 1°) → the model grid: North America at 1°.
SELECT valid_time, latitude, longitude, t2m
FROM era5
WHERE latitude BETWEEN 7 AND 83
  AND longitude BETWEEN 191 AND 325
  AND latitude % 1 = 0
  AND longitude % 1 = 0
