//! Which snapshots a node lets go, by its own policy only: scheduled ones
//! past their hourly, daily and weekly counts, and, past the byte budget,
//! the oldest automatic ones first. The operator's own are never expired.

use super::{Kind, Listed};

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// The scheduled snapshots (`(created_ms, name)`, any order) no rule keeps:
/// each rule keeps the newest of each of its last `n` periods up to `now`,
/// and the newest of all is always kept.
pub fn expired(
    scheduled: &[(u64, String)],
    now_ms: u64,
    hourly: u32,
    daily: u32,
    weekly: u32,
) -> Vec<String> {
    let mut sorted: Vec<&(u64, String)> = scheduled.iter().collect();
    sorted.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    let mut keep = vec![false; sorted.len()];
    if !sorted.is_empty() {
        keep[0] = true;
    }
    for (period, n) in [(HOUR, hourly), (DAY, daily), (WEEK, weekly)] {
        let now_bucket = now_ms / period;
        let mut seen = std::collections::HashSet::new();
        for (i, (t, _)) in sorted.iter().enumerate() {
            let b = t / period;
            if now_bucket.saturating_sub(b) < n as u64 && seen.insert(b) {
                keep[i] = true;
            }
        }
    }
    sorted
        .iter()
        .zip(keep)
        .filter(|(_, k)| !k)
        .map(|((_, name), _)| name.clone())
        .collect()
}

/// The before-resync snapshots (`(created_ms, name)`) held longer than
/// `keep_for` past the end of their resync (the one after each, or
/// `resync_ended_ms` for the newest). Never while a resync runs.
pub fn stale_before_resync(
    taken: &[(u64, String)],
    resync_ended_ms: Option<u64>,
    resyncing: bool,
    now_ms: u64,
    keep_for_ms: u64,
) -> Vec<String> {
    if resyncing {
        return Vec::new();
    }
    let mut sorted: Vec<&(u64, String)> = taken.iter().collect();
    sorted.sort_by_key(|(t, _)| *t);
    let mut out = Vec::new();
    for (i, (t, name)) in sorted.iter().enumerate() {
        // The resync after it ended before the next one began; the newest's
        // ended when this daemon saw it end (or, unknown, when it began).
        let ended = match sorted.get(i + 1) {
            Some((next, _)) => *next,
            None => resync_ended_ms.unwrap_or(*t).max(*t),
        };
        if now_ms.saturating_sub(ended) > keep_for_ms {
            out.push(name.clone());
        }
    }
    out
}

/// The next snapshot to let go while `list` holds more than `budget`
/// bytes: the oldest automatic one (scheduled, then verify, then
/// before-resync, never `protect`, never an operator's).
pub fn over_budget(list: &[Listed], budget: u64, protect: Option<&str>) -> Option<String> {
    let held: u64 = list.iter().map(|l| l.bytes).sum();
    if held <= budget {
        return None;
    }
    for kind in [Kind::Scheduled, Kind::Verify, Kind::BeforeResync] {
        if let Some(l) = list
            .iter()
            .filter(|l| l.snapshot.kind == kind && Some(l.snapshot.name.as_str()) != protect)
            .min_by_key(|l| l.snapshot.id)
        {
            return Some(l.snapshot.name.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u64, name: &str) -> (u64, String) {
        (h * HOUR, name.to_string())
    }

    #[test]
    fn the_newest_of_each_recent_period_is_kept() {
        // Every 30 min for 6 h: with 3 hourly and no daily or weekly, the
        // newest of each of the last 3 hours stays.
        let list: Vec<_> = (0..12).map(|i| (i * HOUR / 2, format!("s{i}"))).collect();
        let now = 6 * HOUR - 1;
        let mut gone = expired(&list, now, 3, 0, 0);
        gone.sort();
        let mut want: Vec<String> = (0..12)
            .filter(|i| ![11, 9, 7].contains(i))
            .map(|i| format!("s{i}"))
            .collect();
        want.sort();
        assert_eq!(gone, want);
        // Nothing kept by any rule: still the newest.
        assert_eq!(
            expired(&[at(1, "a"), at(2, "b")], 100 * DAY, 1, 1, 1),
            vec!["a"]
        );
        // A daily rule keeps one per day on top of the hourly ones.
        let two_days = [at(1, "d0"), at(30, "d1a"), at(31, "d1b")];
        assert_eq!(expired(&two_days, 32 * HOUR, 1, 2, 0), vec!["d1a"]);
    }

    #[test]
    fn before_resync_snapshots_go_some_time_after_their_resync() {
        let taken = [(1_000, "a".to_string()), (50_000, "b".to_string())];
        // a's resync ended by the time b was taken (50 s), b's at 60 s;
        // each kept 30 s after.
        assert!(stale_before_resync(&taken, Some(60_000), false, 70_000, 30_000).is_empty());
        assert_eq!(
            stale_before_resync(&taken, Some(60_000), false, 81_000, 30_000),
            vec!["a"]
        );
        let mut gone = stale_before_resync(&taken, Some(60_000), false, 91_000, 30_000);
        gone.sort();
        assert_eq!(gone, vec!["a", "b"]);
        assert!(stale_before_resync(&taken, Some(60_000), true, 1_000_000, 30_000).is_empty());
        // Unknown end (a restart since): from when it was taken.
        assert_eq!(
            stale_before_resync(&taken[1..], None, false, 81_000, 30_000),
            vec!["b"]
        );
    }

    fn listed(id: u64, kind: Kind, bytes: u64) -> Listed {
        Listed {
            snapshot: super::super::Snapshot {
                id,
                name: format!("n{id}"),
                kind,
                node: "a".into(),
                created_ms: id,
                role: "primary".into(),
                position: None,
                generation: None,
                consistent: true,
                broken: None,
                dirs: Vec::new(),
            },
            bytes,
        }
    }

    #[test]
    fn past_the_budget_the_oldest_automatic_goes_first() {
        let list = vec![
            listed(1, Kind::Manual, 100),
            listed(2, Kind::BeforeResync, 100),
            listed(3, Kind::Scheduled, 100),
            listed(4, Kind::Scheduled, 100),
        ];
        assert_eq!(over_budget(&list, 400, None), None);
        assert_eq!(over_budget(&list, 399, None).as_deref(), Some("n3"));
        let no_sched: Vec<_> = list
            .iter()
            .filter(|l| l.snapshot.kind != Kind::Scheduled)
            .cloned()
            .collect();
        assert_eq!(over_budget(&no_sched, 10, None).as_deref(), Some("n2"));
        assert_eq!(over_budget(&no_sched, 10, Some("n2")), None);
    }
}
