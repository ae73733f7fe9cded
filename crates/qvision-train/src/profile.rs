//! Time per op kind and direction, collected when `QVISION_TRAIN_PROFILE` is set and printed by
//! [`report`] (the CLI prints it at the end of a run).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("QVISION_TRAIN_PROFILE").is_some())
}

/// (direction, op) -> (seconds, calls).
type Table = BTreeMap<(String, String), (f64, usize)>;

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(Default::default)
}

pub(crate) fn record(dir: &str, op: &str, since: Instant) {
    if !enabled() {
        return;
    }
    let dt = since.elapsed().as_secs_f64();
    if let Ok(mut t) = table().lock() {
        let e = t.entry((dir.to_string(), op.to_string())).or_default();
        e.0 += dt;
        e.1 += 1;
    }
}

/// The collected times, largest first, one line per (direction, op); empty when disabled.
pub fn report() -> String {
    let Ok(t) = table().lock() else {
        return String::new();
    };
    let mut rows: Vec<_> = t.iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    rows.iter()
        .map(|((d, o), (s, n))| format!("{d} {o:<20} {s:>8.3}s {n:>7} calls\n"))
        .collect()
}
