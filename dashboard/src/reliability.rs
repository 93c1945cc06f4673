//! What the fleet's own drives say about drive reliability: per model (and firmware) the
//! drive-days observed, the drives that failed, and the annualised failure rate with a 95 %
//! confidence interval, the way Backblaze publishes theirs (failures / drive-days × 365, only
//! for models with enough drive-days); for the attributes Backblaze found predictive, the
//! failure rate of drives whose value was non-zero against those at zero; and from both a
//! "replace soon" ranking of the drives in service. Pure arithmetic on counts that
//! `storage::reliability` loads.

use serde::{Deserialize, Serialize};

/// Models (and firmware) with fewer drive-days than this get no rate: a rate from a handful of
/// drives is noise with a number on it.
pub const MIN_DRIVE_DAYS: f64 = 1000.0;

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Counts for one model (firmware `None`: every firmware together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub model: String,
    pub firmware: Option<String>,
    pub drives: i64,
    pub drive_days: f64,
    pub failures: i64,
}

/// An annualised failure rate, in percent, with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Afr {
    pub percent: f64,
    pub low: f64,
    pub high: f64,
}

/// The chi-square quantile for probability `p` and `dof` degrees of freedom (Wilson–Hilferty;
/// within a few percent of the exact value from one degree of freedom on, which is closer than
/// the failure counts are to a Poisson process).
fn chi2_quantile(p_z: f64, dof: f64) -> f64 {
    if dof <= 0.0 {
        return 0.0;
    }
    let a = 2.0 / (9.0 * dof);
    let t = 1.0 - a + p_z * a.sqrt();
    (dof * t * t * t).max(0.0)
}

/// P(X ≤ k) for X Poisson with mean `lambda`, summed in log space.
fn poisson_cdf(k: u32, lambda: f64) -> f64 {
    let ln = lambda.ln();
    let mut ln_fact = 0.0;
    let mut sum = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_fact += f64::from(i).ln();
        }
        sum += (-lambda + f64::from(i) * ln - ln_fact).exp();
    }
    sum.min(1.0)
}

/// The λ at which `f(λ)` (decreasing in λ) crosses `target`, by bisection.
fn solve(f: impl Fn(f64) -> f64, target: f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Exact Poisson bounds for `k` events up to this many; Wilson–Hilferty above, where it is
/// within a fraction of a percent.
const EXACT_UP_TO: u32 = 200;

/// The two-sided 95 % interval of a Poisson mean after `k` events.
fn poisson_interval(k: u32) -> (f64, f64) {
    if k > EXACT_UP_TO {
        let k = f64::from(k);
        return (
            chi2_quantile(-Z95, 2.0 * k) / 2.0,
            chi2_quantile(Z95, 2.0 * k + 2.0) / 2.0,
        );
    }
    let span = 10.0 * f64::from(k) + 50.0;
    let low = if k == 0 {
        0.0
    } else {
        // P(X >= k | low) = 2.5 %, i.e. P(X <= k-1 | low) = 97.5 %.
        solve(|l| poisson_cdf(k - 1, l), 0.975, 0.0, span)
    };
    // P(X <= k | high) = 2.5 %.
    let high = solve(|l| poisson_cdf(k, l), 0.025, 0.0, span);
    (low, high)
}

/// failures / drive-days × 365, as a percentage, with the exact Poisson 95 % interval.
/// `None` below [`MIN_DRIVE_DAYS`].
pub fn afr(failures: i64, drive_days: f64) -> Option<Afr> {
    if drive_days.is_nan() || drive_days < MIN_DRIVE_DAYS {
        return None;
    }
    let k = failures.max(0) as f64;
    let years = drive_days / 365.0;
    let (low, high) = poisson_interval(u32::try_from(failures.max(0)).unwrap_or(u32::MAX));
    Some(Afr {
        percent: 100.0 * k / years,
        low: 100.0 * low / years,
        high: 100.0 * high / years,
    })
}

/// One model's (or model and firmware's) line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRate {
    #[serde(flatten)]
    pub counts: Counts,
    /// `None` with too few drive-days.
    pub afr: Option<Afr>,
}

/// An attribute's split: drives whose latest value was non-zero against zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeSplit {
    /// `ATA 5 reallocated sectors`, `NVMe media errors`, ….
    pub attribute: String,
    pub nonzero: Counts,
    pub zero: Counts,
    pub nonzero_afr: Option<Afr>,
    pub zero_afr: Option<Afr>,
    /// How many times likelier a non-zero drive failed (`None` without both rates, or with
    /// none failing at zero).
    pub ratio: Option<f64>,
}

impl AttributeSplit {
    pub fn new(attribute: &str, nonzero: Counts, zero: Counts) -> AttributeSplit {
        let nonzero_afr = afr(nonzero.failures, nonzero.drive_days);
        let zero_afr = afr(zero.failures, zero.drive_days);
        let ratio = match (nonzero_afr, zero_afr) {
            (Some(n), Some(z)) if z.percent > 0.0 => Some(n.percent / z.percent),
            _ => None,
        };
        AttributeSplit {
            attribute: attribute.to_owned(),
            nonzero,
            zero,
            nonzero_afr,
            zero_afr,
            ratio,
        }
    }
}

/// A drive in service, as the ranking sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InService {
    pub drive_key: String,
    pub model: String,
    pub serial: Option<String>,
    pub appliance: String,
    /// The predictive attributes whose latest value is non-zero, by [`AttributeSplit`] name.
    pub nonzero: Vec<String>,
}

/// A drive to replace soon, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplaceSoon {
    #[serde(flatten)]
    pub drive: InService,
    /// Expected annual failure probability, percent: the model's rate times the fleet's
    /// ratio for each non-zero attribute, capped at 100.
    pub risk_percent: f64,
}

/// Ranks `drives` by their model's rate (the fleet's rate where the model has too few
/// drive-days) times the ratio of each attribute they show; only drives showing an attribute
/// that predicts failure in this fleet (ratio above 1), at most `limit`, riskiest first.
pub fn replace_soon(
    drives: Vec<InService>,
    models: &[ModelRate],
    splits: &[AttributeSplit],
    fleet: Option<Afr>,
    limit: usize,
) -> Vec<ReplaceSoon> {
    let base = |model: &str| {
        models
            .iter()
            .find(|m| m.counts.firmware.is_none() && m.counts.model == model)
            .and_then(|m| m.afr)
            .or(fleet)
            .map_or(0.0, |a| a.percent)
    };
    let mut ranked: Vec<ReplaceSoon> = drives
        .into_iter()
        .filter_map(|d| {
            let ratios: Vec<f64> = d
                .nonzero
                .iter()
                .filter_map(|a| splits.iter().find(|s| &s.attribute == a))
                .filter_map(|s| s.ratio)
                .filter(|r| r.is_finite() && *r > 1.0)
                .collect();
            if ratios.is_empty() {
                return None;
            }
            let risk_percent = (base(&d.model) * ratios.iter().product::<f64>()).min(100.0);
            Some(ReplaceSoon {
                drive: d,
                risk_percent,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.risk_percent
            .total_cmp(&a.risk_percent)
            .then_with(|| b.drive.nonzero.len().cmp(&a.drive.nonzero.len()))
            .then_with(|| a.drive.drive_key.cmp(&b.drive.drive_key))
    });
    ranked.truncate(limit);
    ranked
}

/// Everything the reliability page and API show, as maintenance computed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub computed_at: chrono::DateTime<chrono::Utc>,
    pub fleet: Counts,
    pub fleet_afr: Option<Afr>,
    /// Per model (firmware `None`) and per model and firmware, most drive-days first.
    pub models: Vec<ModelRate>,
    pub attributes: Vec<AttributeSplit>,
    pub replace_soon: Vec<ReplaceSoon>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(1e-9)
    }

    #[test]
    fn rates_and_intervals_match_the_poisson_tables() {
        // 10 failures in 100,000 drive-days: 3.65 %/year; the exact 95 % interval for 10
        // events is 4.795 .. 18.39 events, so 1.750 % .. 6.713 %.
        let a = afr(10, 100_000.0).unwrap();
        assert!(close(a.percent, 3.65, 1e-9), "{a:?}");
        assert!(close(a.low, 1.750, 0.002), "{a:?}");
        assert!(close(a.high, 6.713, 0.002), "{a:?}");
        // Many events: the approximation's side agrees with the exact one at the seam.
        let exact = poisson_interval(EXACT_UP_TO);
        let approx = (
            chi2_quantile(-Z95, 2.0 * f64::from(EXACT_UP_TO)) / 2.0,
            chi2_quantile(Z95, 2.0 * f64::from(EXACT_UP_TO) + 2.0) / 2.0,
        );
        assert!(close(exact.0, approx.0, 0.002) && close(exact.1, approx.1, 0.002));
        // None failed in 36,500 drive-days (100 drive-years): 0 %, up to 3.689 events.
        let z = afr(0, 36_500.0).unwrap();
        assert_eq!((z.percent, z.low), (0.0, 0.0));
        assert!(close(z.high, 3.689 / 100.0 * 100.0, 0.002), "{z:?}");
        assert_eq!(afr(3, 999.0), None, "too few drive-days");
        assert_eq!(afr(3, f64::NAN), None);
    }

    #[test]
    fn a_seeded_fleet_ranks_its_riskiest_drives_first() {
        let counts = |model: &str, drives, drive_days, failures| Counts {
            model: model.into(),
            firmware: None,
            drives,
            drive_days,
            failures,
        };
        let models = vec![
            ModelRate {
                afr: afr(20, 73_000.0),
                counts: counts("HOT-1", 200, 73_000.0, 20),
            },
            ModelRate {
                afr: afr(1, 73_000.0),
                counts: counts("COOL-1", 200, 73_000.0, 1),
            },
        ];
        let split = AttributeSplit::new(
            "ATA 5 reallocated sectors",
            counts("", 20, 7_300.0, 10),
            counts("", 380, 138_700.0, 11),
        );
        // 50 %/year against 2.9 %/year: 17 times likelier.
        assert!(close(
            split.ratio.unwrap(),
            50.0 / (11.0 / 380.0 * 100.0),
            1e-6
        ));
        let drive = |key: &str, model: &str, nonzero: &[&str]| InService {
            drive_key: key.into(),
            model: model.into(),
            serial: None,
            appliance: "SN".into(),
            nonzero: nonzero.iter().map(|s| (*s).to_owned()).collect(),
        };
        let ranked = replace_soon(
            vec![
                drive("a", "COOL-1", &["ATA 5 reallocated sectors"]),
                drive("b", "HOT-1", &["ATA 5 reallocated sectors"]),
                drive("c", "HOT-1", &[]),
                drive("d", "NEW-1", &["ATA 5 reallocated sectors"]),
            ],
            &models,
            &[split],
            afr(21, 146_000.0),
            10,
        );
        let keys: Vec<&str> = ranked.iter().map(|r| r.drive.drive_key.as_str()).collect();
        assert_eq!(keys, ["b", "d", "a"], "{ranked:?}");
        assert_eq!(ranked[0].risk_percent, 100.0, "capped");
    }
}
