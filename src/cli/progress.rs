//! How a resync's progress reads on a terminal.

use crate::replication::status::ResyncProgress;

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

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
    let eta = if rate > 0.0 && p.running {
        format!(", ETA {:.0} s", (total - p.bytes_done) as f64 / rate)
    } else {
        String::new()
    };
    let cap = if p.max_rate > 0 {
        format!(" (at most {}/s)", human(p.max_rate))
    } else {
        String::new()
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
