//! What the report is made from: medians, footprint and Linux figures.

use super::*;

/// Everything the summary is made from.
pub(super) struct Input {
    pub(super) medians: BTreeMap<String, f64>,
    pub(super) footprint: BTreeMap<String, String>,
    pub(super) linux: Option<BTreeMap<String, String>>,
    pub(super) quick: bool,
    /// CPU model, cores and kernel.
    pub(super) machine: String,
    pub(super) date: String,
    /// The git commit measured (`-dirty` with uncommitted changes).
    pub(super) commit: String,
    pub(super) seconds: u64,
}

impl Input {
    pub(super) fn get(&self, id: &str) -> Option<f64> {
        self.medians.get(id).copied()
    }

    pub(super) fn linux(&self, key: &str) -> Option<f64> {
        self.linux.as_ref()?.get(key)?.parse().ok()
    }

    pub(super) fn footprint(&self, key: &str) -> Option<f64> {
        self.footprint.get(key)?.parse().ok()
    }

    /// Parameters (as numbers) measured for `prefix/…`, ascending.
    pub(super) fn params(&self, prefix: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .medians
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// A Linux figure, or the published one when not measured; and its label.
    pub(super) fn reference(&self, key: &str, published: f64) -> (f64, &'static str) {
        match self.linux(key) {
            Some(v) => (v, "Linux, measured"),
            None => (published, "Linux, published figure"),
        }
    }
}
