//! How a resync's progress reads on a terminal.

use crate::replication::status::ResyncProgress;

pub use crate::replication::status::human;

/// `12.0 MiB of 40.0 MiB (30%), 3/10 files, 5.1 MiB/s, ETA 6 s`
pub fn line(p: &ResyncProgress) -> String {
    let end = if p.running {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    } else {
        p.finished_unix_ms
    };
    let secs = (end.saturating_sub(p.started_unix_ms) as f64 / 1000.0).max(0.001);
    let rate = p.bytes_done as f64 / secs;
    let total = p.bytes_total.max(p.bytes_done);
    let pct = (p.bytes_done * 100).checked_div(total).unwrap_or(100);
    let eta = if rate > 0.0 && p.running && !p.paused {
        format!(", ETA {:.0} s", (total - p.bytes_done) as f64 / rate)
    } else {
        String::new()
    };
    let cap = match (p.paused, p.max_rate) {
        (true, _) => " (PAUSED: tandem resync MODULE --resume)".to_string(),
        (false, 0) => String::new(),
        (false, r) => format!(" (at most {}/s)", human(r)),
    };
    format!(
        "{} of {} ({pct}%), {}/{} files, {} name records, {}/s{cap}{eta}",
        human(p.bytes_done),
        human(total),
        p.files_done,
        p.files_total,
        p.names,
        human(rate as u64)
    )
}
