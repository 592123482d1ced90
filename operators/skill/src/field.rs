//! Scores of a whole predicted field against the true field: PSNR and SSIM
//! on the model's normalised scale (the paper's image metrics) and the
//! latitude-weighted RMSE that weather verification uses.

/// PSNR in dB: 10·log₁₀(range² / MSE). `None` for empty or unequal inputs;
/// infinite for identical fields.
pub fn psnr(prediction: &[f64], truth: &[f64], data_range: f64) -> Option<f64> {
    if prediction.is_empty() || prediction.len() != truth.len() {
        return None;
    }
    let mse = prediction
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t) * (p - t))
        .sum::<f64>()
        / prediction.len() as f64;
    Some(10.0 * (data_range * data_range / mse).log10())
}

/// Width of the Gaussian window (σ = 1.5, truncated at 3.5σ: 11 points).
const SSIM_SIGMA: f64 = 1.5;
const SSIM_RADIUS: usize = 5;

/// Mean structural similarity of two `rows × cols` fields (row-major) with a
/// Gaussian-weighted window, population (co)variances and K₁ = 0.01,
/// K₂ = 0.03 of `data_range`: the settings of Wang et al. (2004) as
/// scikit-image's `structural_similarity(..., gaussian_weights=True,
/// use_sample_covariance=False)` applies them. The mean runs over the
/// positions whose whole window lies inside the field, so no padding rule
/// enters. `None` if a side is shorter than the 11-point window.
pub fn ssim(
    prediction: &[f64],
    truth: &[f64],
    rows: usize,
    cols: usize,
    data_range: f64,
) -> Option<f64> {
    let window = 2 * SSIM_RADIUS + 1;
    if rows < window
        || cols < window
        || prediction.len() != rows * cols
        || truth.len() != rows * cols
    {
        return None;
    }
    let kernel: Vec<f64> = {
        let raw: Vec<f64> = (0..window)
            .map(|k| {
                let d = k as f64 - SSIM_RADIUS as f64;
                (-0.5 * d * d / (SSIM_SIGMA * SSIM_SIGMA)).exp()
            })
            .collect();
        let sum: f64 = raw.iter().sum();
        raw.into_iter().map(|w| w / sum).collect()
    };
    let (out_rows, out_cols) = (rows - window + 1, cols - window + 1);
    // Separable "valid" filtering: along columns, then along rows.
    let filter = |field: &dyn Fn(usize) -> f64| -> Vec<f64> {
        let mut along_cols = vec![0.0; rows * out_cols];
        for r in 0..rows {
            for c in 0..out_cols {
                along_cols[r * out_cols + c] = (0..window)
                    .map(|k| kernel[k] * field(r * cols + c + k))
                    .sum();
            }
        }
        let mut out = vec![0.0; out_rows * out_cols];
        for r in 0..out_rows {
            for c in 0..out_cols {
                out[r * out_cols + c] = (0..window)
                    .map(|k| kernel[k] * along_cols[(r + k) * out_cols + c])
                    .sum();
            }
        }
        out
    };
    let (x, y) = (prediction, truth);
    let ux = filter(&|i| x[i]);
    let uy = filter(&|i| y[i]);
    let uxx = filter(&|i| x[i] * x[i]);
    let uyy = filter(&|i| y[i] * y[i]);
    let uxy = filter(&|i| x[i] * y[i]);
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let total: f64 = (0..ux.len())
        .map(|i| {
            let (vx, vy) = (uxx[i] - ux[i] * ux[i], uyy[i] - uy[i] * uy[i]);
            let vxy = uxy[i] - ux[i] * uy[i];
            ((2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2))
                / ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2))
        })
        .sum();
    Some(total / ux.len() as f64)
}

/// How a cell's latitude weights its error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AreaWeight {
    /// cos(latitude): the usual weight for a regular grid (WeatherBench).
    CosLatitude,
    /// The exact area of a cell `spacing` degrees tall centred on the
    /// latitude: sin(φ + Δ/2) − sin(φ − Δ/2), clipped at the poles, so a
    /// polar row still counts for its half cell.
    CellArea { spacing: f64 },
}

impl AreaWeight {
    /// The (unnormalised) weight of a cell at `latitude` degrees.
    pub fn weight(self, latitude: f64) -> f64 {
        match self {
            Self::CosLatitude => latitude.to_radians().cos().max(0.0),
            Self::CellArea { spacing } => {
                let top = (latitude + spacing / 2.0).min(90.0).to_radians();
                let bottom = (latitude - spacing / 2.0).max(-90.0).to_radians();
                (top.sin() - bottom.sin()).max(0.0)
            }
        }
    }
}

/// √(Σ w·(p − t)² / Σ w) with w from each cell's latitude. `None` for
/// unequal lengths or zero total weight.
pub fn weighted_rmse(
    prediction: &[f64],
    truth: &[f64],
    latitude: &[f64],
    weighting: AreaWeight,
) -> Option<f64> {
    if prediction.len() != truth.len() || prediction.len() != latitude.len() {
        return None;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for ((p, t), lat) in prediction.iter().zip(truth).zip(latitude) {
        let w = weighting.weight(*lat);
        num += w * (p - t) * (p - t);
        den += w;
    }
    (den > 0.0).then(|| (num / den).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields the reference values were computed on (16 × 20).
    fn fields() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut x, mut y, mut y2) = (vec![], vec![], vec![]);
        for i in 0..16 {
            for j in 0..20 {
                let v = (0.3 * i as f64).sin() * (0.2 * j as f64).cos();
                x.push(v);
                y.push(v + 0.1 * (1.7 * i as f64 + 0.9 * j as f64).sin());
                y2.push(0.5 * v + 0.2);
            }
        }
        (x, y, y2)
    }

    /// scikit-image 0.26.0: `structural_similarity(x, y, data_range=2.0,
    /// gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` and
    /// `peak_signal_noise_ratio(x, y, data_range=2.0)`.
    const SKIMAGE: [(f64, f64); 2] = [
        (0.9509970976420363, 29.028738599233982),
        (0.07672727050770754, 15.406286009474496),
    ];

    #[test]
    fn matches_scikit_image() {
        let (x, y, y2) = fields();
        for (other, (ref_ssim, ref_psnr)) in [y, y2].iter().zip(SKIMAGE) {
            let s = ssim(&x, other, 16, 20, 2.0).unwrap();
            let p = psnr(&x, other, 2.0).unwrap();
            assert!((s - ref_ssim).abs() < 1e-9, "SSIM {s} vs {ref_ssim}");
            assert!((p - ref_psnr).abs() < 1e-9, "PSNR {p} vs {ref_psnr}");
        }
    }

    #[test]
    fn ssim_of_a_field_with_itself_is_one_and_small_fields_are_refused() {
        let (x, _, _) = fields();
        assert!((ssim(&x, &x, 16, 20, 2.0).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(ssim(&x[..100], &x[..100], 10, 10, 2.0), None);
        assert_eq!(psnr(&x, &x, 2.0), Some(f64::INFINITY));
    }

    #[test]
    fn psnr_by_hand() {
        // MSE 0.04, range 2: 10·log10(4 / 0.04) = 20 dB.
        assert!((psnr(&[0.2, -0.2], &[0.0, 0.0], 2.0).unwrap() - 20.0).abs() < 1e-12);
    }

    #[test]
    fn latitude_weights_by_hand() {
        // Error 2 at the equator, error 0 at 60°N: cos weights 1 and ½,
        // so RMSE = √(4 / 1.5).
        let r = weighted_rmse(
            &[2.0, 0.0],
            &[0.0, 0.0],
            &[0.0, 60.0],
            AreaWeight::CosLatitude,
        )
        .unwrap();
        assert!((r - (4.0f64 / 1.5).sqrt()).abs() < 1e-12);
        // Cell areas of a 1° grid: the 60° row is half the equator's to 1e-4.
        let area = AreaWeight::CellArea { spacing: 1.0 };
        assert!((area.weight(60.0) / area.weight(0.0) - 0.5).abs() < 1e-4);
        // A polar row covers half a cell: sin 90° − sin 89.5°.
        let polar = 1.0 - 89.5f64.to_radians().sin();
        assert!((area.weight(90.0) - polar).abs() < 1e-15);
        assert_eq!(
            weighted_rmse(&[1.0], &[0.0], &[10.0, 20.0], AreaWeight::CosLatitude),
            None
        );
    }
}
