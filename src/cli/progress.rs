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
    // The rate of the last seconds while running (the daemon measures it);
    // the average once done.
    let rate = if p.running && p.rate > 0 {
        p.rate as f64
    } else {
        p.bytes_done as f64 / secs
    };
    let total = p.bytes_total.max(p.bytes_done);
    let pct = (p.bytes_done * 100).checked_div(total).unwrap_or(100);
    let eta = match p.eta_seconds {
        Some(s) if p.running && !p.paused => format!(", ETA {}", duration(s)),
        _ => String::new(),
    };
    let cap = match (p.paused, p.state.as_str(), p.max_rate) {
        (true, ..) => " (PAUSED: tandem resync MODULE --resume)".to_string(),
        (false, "yielding", max) => format!(
            " (yielding to the application's writes: at most {}/s)",
            human(if max > 0 {
                p.min_rate.min(max)
            } else {
                p.min_rate
            })
        ),
        (false, _, 0) => String::new(),
        (false, _, r) => format!(" (at most {}/s)", human(r)),
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

/// `42 s`, `3 min 5 s`, `2 h 10 min`
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A pause kept from before (no resync running now): said so it is not
/// forgotten.
pub fn held(p: &ResyncProgress) -> Option<String> {
    let since = p.paused_since_unix_ms.filter(|_| !p.running)?;
    Some(format!(
        "PAUSED since {} (the next resync waits: tandem resync MODULE --resume)",
        crate::clock::utc(since)
    ))
}
