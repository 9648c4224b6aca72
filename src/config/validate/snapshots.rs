//! `[module.snapshots]`: the schedule and retention of this node's snapshots.

use std::time::Duration;

use super::super::raw::{RawSnapshots, Str};
use super::super::report::Report;
use super::super::settings::SnapshotPolicy;
use super::fields::{self, join};

/// `90s`, `15m`, `1h`, `2d`, `1w`.
fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    if n == 0 {
        return None;
    }
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// `500MiB`, `10GiB`, `2TB`, or a number of bytes.
pub fn bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let k: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(k)
}

fn parsed<T>(
    r: &mut Report,
    value: &Option<Str>,
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Option<Option<T>> {
    let Some(v) = value else {
        return Some(None);
    };
    match parse(v.get_ref()) {
        Some(x) => Some(Some(x)),
        None => {
            r.error(
                field,
                Some(v.span()),
                format!("{:?} is not {what}", v.get_ref()),
            );
            None
        }
    }
}

pub(super) fn policy(
    r: &mut Report,
    raw: Option<&RawSnapshots>,
    base: &str,
) -> Option<SnapshotPolicy> {
    let default = RawSnapshots::default();
    let raw = raw.unwrap_or(&default);
    let d = SnapshotPolicy::default();
    let every = parsed(
        r,
        &raw.every,
        &join(base, "every"),
        duration,
        "a period (a number and s, m, h, d or w: \"1h\")",
    );
    let keep_for = parsed(
        r,
        &raw.keep_before_resync_for,
        &join(base, "keep_before_resync_for"),
        duration,
        "a period (a number and s, m, h, d or w: \"10m\")",
    );
    let budget = parsed(
        r,
        &raw.budget,
        &join(base, "budget"),
        bytes,
        "a size (\"10GiB\", \"500MB\", or bytes)",
    );
    let count = |r: &mut Report, v, key: &str, default: u32| {
        fields::int(r, v, &join(base, key), default.into(), 0, 10_000).map(|n| n as u32)
    };
    let keep_hourly = count(r, &raw.keep_hourly, "keep_hourly", d.keep_hourly);
    let keep_daily = count(r, &raw.keep_daily, "keep_daily", d.keep_daily);
    let keep_weekly = count(r, &raw.keep_weekly, "keep_weekly", d.keep_weekly);
    let keep_before_resync = fields::int(
        r,
        &raw.keep_before_resync,
        &join(base, "keep_before_resync"),
        d.keep_before_resync.into(),
        1,
        1000,
    )
    .map(|n| n as u32);
    let sync_before_change = parsed(
        r,
        &raw.capture_sync,
        &join(base, "capture_sync"),
        |s| match s {
            "deferred" => Some(false),
            "before-change" => Some(true),
            _ => None,
        },
        "\"deferred\" or \"before-change\"",
    );
    let mut script = |value: &Option<Str>, key: &str| -> Option<Option<std::path::PathBuf>> {
        match value {
            None => Some(None),
            Some(v) => fields::abs_path(r, v, &join(base, key)).map(Some),
        }
    };
    let pre_snapshot = script(&raw.pre_snapshot, "pre_snapshot");
    let post_snapshot = script(&raw.post_snapshot, "post_snapshot");
    Some(SnapshotPolicy {
        every: every?,
        keep_hourly: keep_hourly?,
        keep_daily: keep_daily?,
        keep_weekly: keep_weekly?,
        keep_before_resync: keep_before_resync?,
        keep_before_resync_for: keep_for?.unwrap_or(d.keep_before_resync_for),
        budget: budget?,
        sync_before_change: sync_before_change?.unwrap_or(d.sync_before_change),
        pre_snapshot: pre_snapshot?,
        post_snapshot: post_snapshot?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_sizes() {
        assert_eq!(duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in ["", "h", "0s", "1 hour", "-1h", "1.5h", "1y"] {
            assert_eq!(duration(bad), None, "{bad:?}");
        }
        assert_eq!(bytes("10GiB"), Some(10 << 30));
        assert_eq!(bytes("500MB"), Some(500_000_000));
        assert_eq!(bytes("4096"), Some(4096));
        for bad in ["", "GiB", "5XB", "-1", "1.5GiB"] {
            assert_eq!(bytes(bad), None, "{bad:?}");
        }
    }
}
