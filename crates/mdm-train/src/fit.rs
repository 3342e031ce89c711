//! Scaling-law fits (the paper's section on IsoFLOP analysis):
//! 1. per compute budget, a parabola in `ln N` through the losses of the model sizes trained with
//!    that budget gives the optimal size `N*` and loss `L*` ([`fit_isoflop`]);
//! 2. across budgets, least squares in log space gives `L*(C) = a C^b` and `N*(C) = k C^c`
//!    ([`fit_power_law`]), with 95 % confidence intervals from the residuals (Student t with
//!    `points - 2` degrees of freedom: with 3 budgets the intervals are wide, honestly so);
//! 3. the compute gap ([`compute_gap`]): how many times more compute the MDM needs to reach the
//!    baseline's loss at compute `C`, with a 95 % interval ([`compute_gap_interval`]) by the delta
//!    method from both laws' parameter covariances.
//!
//! ```
//! use mdm_train::fit::{fit_power_law, compute_gap};
//!
//! let points: Vec<(f64, f64)> = [1e15f64, 1e16, 1e17, 1e18].iter().map(|&c| (c, 30.0 * c.powf(-0.05))).collect();
//! let fit = fit_power_law(&points).unwrap();
//! assert!((fit.exponent + 0.05).abs() < 1e-9 && (fit.coefficient - 30.0).abs() < 1e-6);
//! let mdm = fit; // the same law: no gap
//! assert!((compute_gap(&mdm, &fit, 1e17) - 1.0).abs() < 1e-9);
//! ```

use serde::Serialize;

use crate::TrainError;

/// The IsoFLOP optimum of one budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IsoFlopOptimum {
    /// Optimal non-embedding parameter count `N*`.
    pub params: f64,
    /// Loss at `N*`.
    pub loss: f64,
    /// Whether the optimum comes from the parabola (false: the parabola opens downwards or peaks
    /// outside the sizes tried, and the best measured point is used instead).
    pub interior: bool,
}

/// `y = p0 + p1 x + p2 x^2` by least squares (at least 3 points with 3 distinct `x`).
pub fn fit_parabola(points: &[(f64, f64)]) -> Result<[f64; 3], TrainError> {
    let mut distinct: Vec<f64> = points.iter().map(|p| p.0).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < 3 {
        return Err(TrainError::Config(format!(
            "a parabola needs 3 distinct sizes, got {}",
            distinct.len()
        )));
    }
    // normal equations  (X^T X) p = X^T y  with columns 1, x, x^2
    let mut m = [[0.0f64; 4]; 3];
    for &(x, y) in points {
        let basis = [1.0, x, x * x];
        for (r, &bi) in m.iter_mut().zip(&basis) {
            for (cell, &bj) in r.iter_mut().zip(&basis) {
                *cell += bi * bj;
            }
            r[3] += bi * y;
        }
    }
    // Gaussian elimination with partial pivoting
    for col in 0..3 {
        let pivot = (col..3)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap_or(col);
        m.swap(col, pivot);
        if m[col][col].abs() < 1e-300 {
            return Err(TrainError::Config("singular parabola fit".into()));
        }
        let pivot_row = m[col];
        for (row, r) in m.iter_mut().enumerate() {
            if row != col {
                let f = r[col] / pivot_row[col];
                for (x, p) in r.iter_mut().zip(pivot_row.iter()).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    Ok([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
}

/// The optimum of one budget from `(N, loss)` points: the vertex of the parabola in `ln N`.
pub fn fit_isoflop(points: &[(f64, f64)]) -> Result<IsoFlopOptimum, TrainError> {
    if points.iter().any(|&(n, l)| n <= 0.0 || !l.is_finite()) {
        return Err(TrainError::Config(
            "sizes must be positive and losses finite".into(),
        ));
    }
    let logs: Vec<(f64, f64)> = points.iter().map(|&(n, l)| (n.ln(), l)).collect();
    let [p0, p1, p2] = fit_parabola(&logs)?;
    let (lo, hi) = logs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.0), hi.max(p.0))
        });
    let vertex = -p1 / (2.0 * p2);
    if p2 > 0.0 && (lo..=hi).contains(&vertex) {
        return Ok(IsoFlopOptimum {
            params: vertex.exp(),
            loss: p0 + p1 * vertex + p2 * vertex * vertex,
            interior: true,
        });
    }
    let best = points
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .copied()
        .unwrap_or((f64::NAN, f64::NAN));
    Ok(IsoFlopOptimum {
        params: best.0,
        loss: best.1,
        interior: false,
    })
}

/// `y = coefficient * x^exponent`, fitted in log space, with 95 % confidence intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PowerLaw {
    /// `a`.
    pub coefficient: f64,
    /// `b`.
    pub exponent: f64,
    /// 95 % interval of the exponent (`NaN` bounds with only 2 points).
    pub exponent_ci: (f64, f64),
    /// 95 % interval of the coefficient.
    pub coefficient_ci: (f64, f64),
    /// Points fitted.
    pub points: usize,
    /// Root mean square residual in log space.
    pub rms_log_residual: f64,
    /// Covariance of the fitted `(ln a, b)`: `[[var ln a, cov], [cov, var b]]` (`NaN` with only 2
    /// points).
    pub covariance: [[f64; 2]; 2],
}

impl PowerLaw {
    /// `a x^b`.
    pub fn eval(&self, x: f64) -> f64 {
        self.coefficient * x.powf(self.exponent)
    }
}

/// Two-sided 95 % Student t quantile for `df` degrees of freedom.
pub fn t_quantile_95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => 1.96,
    }
}

/// Least squares of `ln y = ln a + b ln x` over `(x, y)` points (all positive, 2 or more distinct
/// `x`).
pub fn fit_power_law(points: &[(f64, f64)]) -> Result<PowerLaw, TrainError> {
    if points.len() < 2 || points.iter().any(|&(x, y)| x <= 0.0 || y <= 0.0) {
        return Err(TrainError::Config(
            "a power law needs 2 or more points with positive x and y".into(),
        ));
    }
    let k = points.len() as f64;
    let logs: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x.ln(), y.ln())).collect();
    let mx = logs.iter().map(|p| p.0).sum::<f64>() / k;
    let my = logs.iter().map(|p| p.1).sum::<f64>() / k;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return Err(TrainError::Config("a power law needs 2 distinct x".into()));
    }
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = sxy / sxx;
    let ln_a = my - b * mx;
    let ssr: f64 = logs.iter().map(|p| (p.1 - ln_a - b * p.0).powi(2)).sum();
    let df = points.len() - 2;
    // residual variance; the parameters' covariance is s^2 (X^T X)^-1
    let s2 = if df == 0 { f64::NAN } else { ssr / df as f64 };
    let covariance = [
        [s2 * (1.0 / k + mx * mx / sxx), -s2 * mx / sxx],
        [-s2 * mx / sxx, s2 / sxx],
    ];
    let t = t_quantile_95(df);
    let (se_ln_a, se_b) = (covariance[0][0].sqrt(), covariance[1][1].sqrt());
    let exponent_ci = (b - t * se_b, b + t * se_b);
    let coefficient_ci = ((ln_a - t * se_ln_a).exp(), (ln_a + t * se_ln_a).exp());
    Ok(PowerLaw {
        coefficient: ln_a.exp(),
        exponent: b,
        exponent_ci,
        coefficient_ci,
        points: points.len(),
        rms_log_residual: (ssr / k).sqrt(),
        covariance,
    })
}

/// How many times more compute the MDM (`mdm`: its `L*(C)` law) needs to reach the loss the
/// baseline (`arm`) reaches with compute `c`: `C' / c` where `mdm(C') = arm(c)`.
pub fn compute_gap(mdm: &PowerLaw, arm: &PowerLaw, c: f64) -> f64 {
    let target = arm.eval(c);
    let ln_c = (target.ln() - mdm.coefficient.ln()) / mdm.exponent;
    (ln_c - c.ln()).exp()
}

/// A 95 % interval of [`compute_gap`] at `c`: the delta method on
/// `ln gap = (ln a_arm + b_arm ln c - ln a_mdm) / b_mdm - ln c` with the two fits independent, a
/// Student t quantile for the smaller of their degrees of freedom. `NaN` bounds when either law
/// was fitted through 2 points. A linearisation: with few budgets and an MDM exponent near 0
/// the true interval is wider and skewed; read it as a scale, not an exact coverage.
pub fn compute_gap_interval(mdm: &PowerLaw, arm: &PowerLaw, c: f64) -> (f64, f64) {
    let ln_c = c.ln();
    let [[va_arm, cab_arm], [_, vb_arm]] = arm.covariance;
    let [[va, cab], [_, vb]] = mdm.covariance;
    // u = ln L_arm(c), and its variance
    let u = arm.coefficient.ln() + arm.exponent * ln_c;
    let var_u = va_arm + ln_c * ln_c * vb_arm + 2.0 * ln_c * cab_arm;
    let (b, d) = (mdm.exponent, u - mdm.coefficient.ln());
    // gradient of ln gap in (u, ln a_mdm, b_mdm): (1/b, -1/b, -d/b^2)
    let var = var_u / (b * b) + va / (b * b) + d * d * vb / b.powi(4) + 2.0 * d * cab / b.powi(3);
    let df = mdm.points.min(arm.points).saturating_sub(2);
    let half = t_quantile_95(df) * var.sqrt();
    let ln_gap = compute_gap(mdm, arm, c).ln();
    ((ln_gap - half).exp(), (ln_gap + half).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic "noise" source for the tests.
    fn noise(i: usize) -> f64 {
        let x = ((i as f64 + 1.0) * 12.9898).sin() * 43758.5453;
        (x - x.floor()) - 0.5
    }

    #[test]
    fn gap_interval_covers_the_truth_and_narrows_with_less_noise() {
        // L_arm = 20 C^-0.1, L_mdm needs 8x the compute: 20 (C / 8)^-0.1
        let budgets = [1e12f64, 3e12, 1e13, 3e13, 1e14];
        let law = |gap: f64, scale: f64| {
            let pts: Vec<(f64, f64)> = budgets
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    (
                        c,
                        20.0 * (c / gap).powf(-0.1) * (1.0 + scale * noise(i + 7)),
                    )
                })
                .collect();
            fit_power_law(&pts).unwrap()
        };
        let mut widths = vec![];
        for scale in [0.02, 0.005] {
            let (mdm, arm) = (law(8.0, scale), law(1.0, scale * 0.7));
            let (lo, hi) = compute_gap_interval(&mdm, &arm, 1e13);
            let gap = compute_gap(&mdm, &arm, 1e13);
            assert!(lo < gap && gap < hi, "{lo} {gap} {hi}");
            assert!(lo < 8.0 && 8.0 < hi, "{lo} {hi}");
            widths.push(hi / lo);
        }
        assert!(widths[1] < widths[0], "{widths:?}");
        // exact data: a zero-width interval at the true gap
        let exact = |gap: f64| {
            let pts: Vec<(f64, f64)> = budgets
                .iter()
                .map(|&c| (c, 20.0 * (c / gap).powf(-0.1)))
                .collect();
            fit_power_law(&pts).unwrap()
        };
        let (lo, hi) = compute_gap_interval(&exact(8.0), &exact(1.0), 1e13);
        assert!(
            (lo - 8.0).abs() < 1e-6 && (hi - 8.0).abs() < 1e-6,
            "{lo} {hi}"
        );
        // two points: no interval
        let two = fit_power_law(&[(1e12, 3.0), (1e13, 2.5)]).unwrap();
        assert!(compute_gap_interval(&two, &two, 1e12).0.is_nan());
    }

    #[test]
    fn parabola_and_isoflop_vertex() {
        // L = 3 + 0.2 (ln N - ln 1e6)^2
        let pts: Vec<(f64, f64)> = [2e5, 5e5, 1e6, 3e6, 8e6]
            .iter()
            .map(|&n: &f64| (n, 3.0 + 0.2 * (n.ln() - 1e6f64.ln()).powi(2)))
            .collect();
        let opt = fit_isoflop(&pts).unwrap();
        assert!(opt.interior);
        assert!((opt.params / 1e6 - 1.0).abs() < 1e-6 && (opt.loss - 3.0).abs() < 1e-9);
        // a monotone set: the best point, flagged
        let mono = [(1e5, 5.0), (1e6, 4.0), (1e7, 3.5)];
        let opt = fit_isoflop(&mono).unwrap();
        assert!(!opt.interior && opt.params == 1e7 && opt.loss == 3.5);
        assert!(fit_isoflop(&mono[..2]).is_err());
    }

    #[test]
    fn power_law_fit_recovers_known_exponents_under_noise() {
        // L*(C) = 40 C^-0.06 and N*(C) = 0.1 C^0.5, with 2 % multiplicative noise, 8 budgets
        let budgets: Vec<f64> = (0..8).map(|i| 1e14 * 3f64.powi(i)).collect();
        let loss: Vec<(f64, f64)> = budgets
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, 40.0 * c.powf(-0.06) * (1.0 + 0.02 * noise(i))))
            .collect();
        let params: Vec<(f64, f64)> = budgets
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, 0.1 * c.powf(0.5) * (1.0 + 0.02 * noise(i + 50))))
            .collect();
        let l = fit_power_law(&loss).unwrap();
        let n = fit_power_law(&params).unwrap();
        assert!((l.exponent + 0.06).abs() < 0.005, "{l:?}");
        assert!((n.exponent - 0.5).abs() < 0.005, "{n:?}");
        // the true values lie inside the 95 % intervals, which are not degenerate
        assert!(l.exponent_ci.0 < -0.06 && -0.06 < l.exponent_ci.1, "{l:?}");
        assert!(n.exponent_ci.0 < 0.5 && 0.5 < n.exponent_ci.1, "{n:?}");
        assert!(
            l.coefficient_ci.0 < 40.0 && 40.0 < l.coefficient_ci.1,
            "{l:?}"
        );
        assert!(l.exponent_ci.1 - l.exponent_ci.0 > 1e-4);
        // more noise, wider intervals
        let noisy: Vec<(f64, f64)> = budgets
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, 40.0 * c.powf(-0.06) * (1.0 + 0.2 * noise(i))))
            .collect();
        let wide = fit_power_law(&noisy).unwrap();
        assert!(
            wide.exponent_ci.1 - wide.exponent_ci.0 > 5.0 * (l.exponent_ci.1 - l.exponent_ci.0)
        );
        assert!(fit_power_law(&loss[..1]).is_err());
        assert!(fit_power_law(&[(1.0, 1.0), (1.0, 2.0)]).is_err());
    }

    #[test]
    fn compute_gap_of_a_constant_factor() {
        // the MDM needs 16x the compute for the same loss: L_mdm(C) = L_arm(C / 16)
        let arm = fit_power_law(&[
            (1e15, 10.0 * 1e15f64.powf(-0.05)),
            (1e18, 10.0 * 1e18f64.powf(-0.05)),
        ])
        .unwrap();
        let mdm_pts: Vec<(f64, f64)> = [1e15, 1e18]
            .iter()
            .map(|&c: &f64| (c, arm.eval(c / 16.0)))
            .collect();
        let mdm = fit_power_law(&mdm_pts).unwrap();
        for c in [1e16, 1e20] {
            assert!((compute_gap(&mdm, &arm, c) - 16.0).abs() < 1e-6);
        }
        assert_eq!(t_quantile_95(1), 12.706);
        assert_eq!(t_quantile_95(100), 1.96);
    }
}
