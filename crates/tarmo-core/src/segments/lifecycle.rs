//! Lifecycle stages and RFM scores from a person's orders.
//!
//! Recency, frequency and monetary value are scored 1–5 by quintiles over
//! the customer base (5 is best: most recent, most orders, most spent); the
//! stage follows from time since the first and the last order and the number
//! of orders, with thresholds an operator can change (`[commerce]`).

use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// First order recently.
    New,
    /// Bought recently.
    Active,
    /// Bought recently and often.
    Loyal,
    /// No order for a while: retain.
    AtRisk,
    /// No order for long: win back.
    Lapsed,
}

impl Stage {
    pub const ALL: [Self; 5] = [
        Self::New,
        Self::Active,
        Self::Loyal,
        Self::AtRisk,
        Self::Lapsed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Active => "active",
            Self::Loyal => "loyal",
            Self::AtRisk => "at_risk",
            Self::Lapsed => "lapsed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The thresholds, in days and orders (`[commerce]` in tarmo.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// The event that is an order.
    pub order_event: String,
    /// Its property holding the order's value.
    pub revenue_property: String,
    /// `new`: the first order is at most this many days old.
    pub new_days: u32,
    /// `at_risk`: the last order is older than this.
    pub at_risk_days: u32,
    /// `lapsed`: the last order is older than this.
    pub lapsed_days: u32,
    /// `loyal`: at least this many orders (and not at risk).
    pub loyal_orders: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            order_event: "Order Completed".into(),
            revenue_property: "revenue".into(),
            new_days: 30,
            at_risk_days: 90,
            lapsed_days: 180,
            loyal_orders: 5,
        }
    }
}

impl LifecycleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.order_event.trim().is_empty() || self.revenue_property.trim().is_empty() {
            return Err("[commerce] order_event and revenue_property must not be empty".into());
        }
        if !(self.new_days > 0 && self.at_risk_days > 0 && self.at_risk_days < self.lapsed_days) {
            return Err("[commerce] needs new_days > 0 and 0 < at_risk_days < lapsed_days".into());
        }
        if self.loyal_orders < 2 {
            return Err("[commerce] loyal_orders must be at least 2".into());
        }
        Ok(())
    }

    /// The stage of a person with `orders` orders, the first and last at
    /// these times; `None` without orders.
    pub fn stage(&self, orders: u64, first_ms: i64, last_ms: i64, now_ms: i64) -> Option<Stage> {
        if orders == 0 {
            return None;
        }
        let since_last = now_ms - last_ms;
        Some(if since_last > self.lapsed_days as i64 * DAY_MS {
            Stage::Lapsed
        } else if since_last > self.at_risk_days as i64 * DAY_MS {
            Stage::AtRisk
        } else if now_ms - first_ms <= self.new_days as i64 * DAY_MS {
            Stage::New
        } else if orders >= self.loyal_orders as u64 {
            Stage::Loyal
        } else {
            Stage::Active
        })
    }

    /// When the stage of a person whose orders are as given changes by time alone.
    pub fn next_change(&self, first_ms: i64, last_ms: i64, now_ms: i64) -> Option<i64> {
        [
            first_ms + self.new_days as i64 * DAY_MS + 1,
            last_ms + self.at_risk_days as i64 * DAY_MS + 1,
            last_ms + self.lapsed_days as i64 * DAY_MS + 1,
        ]
        .into_iter()
        .filter(|t| *t > now_ms)
        .min()
    }
}

/// Recency, frequency and monetary scores, each 1–5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rfm {
    pub r: u8,
    pub f: u8,
    pub m: u8,
}

/// Quintile boundaries over the customer base, for scoring one person
/// without looking at everyone (a person's new order is scored at once;
/// the boundaries are recomputed daily).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quintiles {
    /// Days since the last order: lower is better.
    pub recency_days: [f64; 4],
    pub frequency: [f64; 4],
    pub monetary: [f64; 4],
    /// Customers with at least one order when computed.
    pub customers: u64,
}

impl Quintiles {
    /// From every customer's (days since last order, orders, value).
    pub fn compute(mut rows: Vec<(f64, f64, f64)>) -> Self {
        let n = rows.len();
        if n == 0 {
            return Self::default();
        }
        let cut = |v: &mut Vec<f64>| -> [f64; 4] {
            v.sort_by(f64::total_cmp);
            [1, 2, 3, 4].map(|q| v[(q * n / 5).min(n - 1)])
        };
        let mut r: Vec<f64> = rows.iter().map(|x| x.0).collect();
        let mut f: Vec<f64> = rows.iter().map(|x| x.1).collect();
        let mut m: Vec<f64> = rows.drain(..).map(|x| x.2).collect();
        Self {
            recency_days: cut(&mut r),
            frequency: cut(&mut f),
            monetary: cut(&mut m),
            customers: n as u64,
        }
    }

    pub fn score(&self, recency_days: f64, frequency: f64, monetary: f64) -> Rfm {
        // Higher-is-better: 1 plus the boundaries the value reaches.
        let up =
            |b: &[f64; 4], x: f64| 1 + b.iter().filter(|c| x >= **c && **c > 0.0).count() as u8;
        // Recency: fewer days is better, so count the boundaries it is under.
        let r = 1 + self
            .recency_days
            .iter()
            .filter(|c| recency_days < **c)
            .count() as u8;
        Rfm {
            r: if self.customers == 0 {
                3
            } else {
                r.clamp(1, 5)
            },
            f: up(&self.frequency, frequency).clamp(1, 5),
            m: up(&self.monetary, monetary).clamp(1, 5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn stages_follow_the_thresholds() {
        let c = LifecycleConfig::default();
        let d = |n: i64| NOW - n * DAY_MS;
        assert_eq!(c.stage(0, 0, 0, NOW), None);
        assert_eq!(c.stage(1, d(10), d(10), NOW), Some(Stage::New));
        assert_eq!(c.stage(2, d(60), d(10), NOW), Some(Stage::Active));
        assert_eq!(c.stage(6, d(400), d(10), NOW), Some(Stage::Loyal));
        assert_eq!(c.stage(6, d(400), d(100), NOW), Some(Stage::AtRisk));
        assert_eq!(c.stage(6, d(400), d(181), NOW), Some(Stage::Lapsed));
        // The stage changes when the last order passes 90 days.
        let t = c.next_change(d(400), d(10), NOW).unwrap();
        assert_eq!(c.stage(6, d(400), d(10), t), Some(Stage::AtRisk));
        assert_eq!(c.stage(6, d(400), d(10), t - 2), Some(Stage::Loyal));
        assert!(
            LifecycleConfig {
                at_risk_days: 200,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn quintiles_spread_customers_over_scores() {
        let rows: Vec<(f64, f64, f64)> = (0..100)
            .map(|i| (i as f64, (100 - i) as f64, (i * 10) as f64))
            .collect();
        let q = Quintiles::compute(rows);
        let best = q.score(0.0, 100.0, 990.0);
        assert_eq!((best.r, best.f, best.m), (5, 5, 5));
        let worst = q.score(99.0, 1.0, 0.0);
        assert_eq!((worst.r, worst.f, worst.m), (1, 1, 1));
        let mid = q.score(50.0, 50.0, 500.0);
        assert_eq!((mid.r, mid.f, mid.m), (3, 3, 3));
    }
}
