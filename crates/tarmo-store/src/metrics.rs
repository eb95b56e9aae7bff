//! Lock-free counters and histograms, rendered as Prometheus text by the
//! server. Kept here because the writer and the store time themselves.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Append this histogram in Prometheus text format; `labels` is either
    /// empty or `key="value",...` without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cum += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// What the ingestion writer did.
pub struct WriterMetrics {
    pub events_stored: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_suppressed: AtomicU64,
    pub profiles_created: AtomicU64,
    pub merges: AtomicU64,
    pub merges_refused: AtomicU64,
    pub groups: AtomicU64,
    pub group_failures: AtomicU64,
    /// Transaction jobs committed, and the transactions they took.
    pub tx_jobs: AtomicU64,
    pub tx_commits: AtomicU64,
    /// Transaction jobs committed as part of a merged call, and merged
    /// calls that failed, their jobs run again one by one.
    pub tx_merged: AtomicU64,
    pub tx_unmerged: AtomicU64,
    /// Checkpoints after an erasure that readers held off (retried).
    pub checkpoint_failures: AtomicU64,
    /// Truncating checkpoints after an erasure, failed ones included.
    pub checkpoint_seconds: Histogram,
    pub commit_seconds: Histogram,
    /// One flush of the write-ahead log under pipelined commit.
    pub flush_seconds: Histogram,
    pub group_events: Histogram,
}

pub const GROUP_SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            events_stored: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            events_suppressed: AtomicU64::new(0),
            profiles_created: AtomicU64::new(0),
            merges: AtomicU64::new(0),
            merges_refused: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            group_failures: AtomicU64::new(0),
            tx_jobs: AtomicU64::new(0),
            tx_commits: AtomicU64::new(0),
            tx_merged: AtomicU64::new(0),
            tx_unmerged: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
            checkpoint_seconds: Histogram::new(LATENCY_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS),
            flush_seconds: Histogram::new(LATENCY_BUCKETS),
            group_events: Histogram::new(GROUP_SIZE_BUCKETS),
        }
    }
}

impl WriterMetrics {
    pub fn render(&self, out: &mut String) {
        let c = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        c(
            out,
            "tarmo_events_ingested_total",
            "Events durably stored.",
            &self.events_stored,
        );
        c(
            out,
            "tarmo_events_duplicate_total",
            "Events dropped as repeats of a messageId.",
            &self.events_duplicate,
        );
        c(
            out,
            "tarmo_events_suppressed_total",
            "Events acknowledged but not stored: they named an erased person.",
            &self.events_suppressed,
        );
        c(
            out,
            "tarmo_profiles_created_total",
            "Profiles created by ingestion.",
            &self.profiles_created,
        );
        c(
            out,
            "tarmo_profile_merges_total",
            "Profiles merged into another.",
            &self.merges,
        );
        c(
            out,
            "tarmo_profile_merges_refused_total",
            "Merges refused by the identity rules.",
            &self.merges_refused,
        );
        c(
            out,
            "tarmo_store_groups_total",
            "Group commits.",
            &self.groups,
        );
        c(
            out,
            "tarmo_store_group_failures_total",
            "Group commits that failed and were retried or refused.",
            &self.group_failures,
        );
        c(
            out,
            "tarmo_store_tx_jobs_total",
            "Write transactions of the API (consents, requests, ...) committed.",
            &self.tx_jobs,
        );
        c(
            out,
            "tarmo_store_tx_commits_total",
            "Commits those took: jobs waiting together share one.",
            &self.tx_commits,
        );
        c(
            out,
            "tarmo_store_tx_merged_total",
            "Of those jobs, the ones run in one call with their neighbours of the same kind.",
            &self.tx_merged,
        );
        c(
            out,
            "tarmo_store_tx_unmerged_total",
            "Merged calls that failed, their jobs then run one by one.",
            &self.tx_unmerged,
        );
        c(
            out,
            "tarmo_store_checkpoint_failures_total",
            "Checkpoints after an erasure that could not truncate the SQLite log (retried while idle).",
            &self.checkpoint_failures,
        );
        let _ = writeln!(
            out,
            "# HELP tarmo_store_commit_seconds Time to resolve, seal, write and commit one group.\n# TYPE tarmo_store_commit_seconds histogram"
        );
        self.commit_seconds
            .render(out, "tarmo_store_commit_seconds", "");
        let _ = writeln!(
            out,
            "# HELP tarmo_store_checkpoint_seconds Time of the truncating checkpoint after an erasure.\n# TYPE tarmo_store_checkpoint_seconds histogram"
        );
        self.checkpoint_seconds
            .render(out, "tarmo_store_checkpoint_seconds", "");
        let _ = writeln!(
            out,
            "# HELP tarmo_store_flush_seconds Time to make the commits written meanwhile durable (one fdatasync of the SQLite log).\n# TYPE tarmo_store_flush_seconds histogram"
        );
        self.flush_seconds
            .render(out, "tarmo_store_flush_seconds", "");
        let _ = writeln!(
            out,
            "# HELP tarmo_store_group_events Events per group commit.\n# TYPE tarmo_store_group_events histogram"
        );
        self.group_events
            .render(out, "tarmo_store_group_events", "");
    }
}
