//! What the primary's side of a module reports: the peer's state, the
//! stream's positions, what the peer still lacks.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::Ordering;

use super::clears::subtract_sorted;
use super::stream::Stream;
use crate::changelog::FileId;
use crate::replication::activity::EXTENT;
use crate::replication::status::{ReplicationStatus, ResyncProgress, Tally, VerifyState};

pub fn status(
    s: &Stream,
    resync: ResyncProgress,
    verify: VerifyState,
    tally: &Tally,
) -> ReplicationStatus {
    let (applied, durable) = s.acks.progress();
    let (peer, sent, hot) = {
        let o = s.lock();
        let peer = match (&o.link, o.resync_done) {
            (None, _) => "alone",
            (Some(_), None) => "resyncing",
            (Some(_), Some(_)) => "connected",
        };
        // Once the peer is current, hot extents of the activity log are
        // crash insurance, not differences: leave them out.
        let hot = if o.current(durable) {
            o.activity.snapshot()
        } else {
            Default::default()
        };
        (peer, o.next_seq - 1, hot)
    };
    let (dirty_bytes, dirty_files) = dirty(s, &hot);
    ReplicationStatus {
        role: "primary".into(),
        peer: peer.into(),
        ack: s.ack.to_string(),
        sent,
        applied,
        durable,
        dirty_bytes,
        dirty_files,
        bytes_replicated: s.bytes_replicated.load(Ordering::Relaxed),
        resync,
        last_error: s.last_error.lock().clone(),
        verify,
        hot_extents: hot.len() as u64,
        wire: tally.counts(),
        protocol: None,
        peer_version: None,
    }
}

/// Bytes and files the peer may lack, hot extents left out.
fn dirty(s: &Stream, hot: &HashSet<(u32, FileId, u64)>) -> (u64, u64) {
    let (mut dirty_bytes, mut dirty_files) = (0, 0);
    if hot.is_empty() {
        // The logs' own counts: a status during a full sync of a million
        // files does not walk them.
        for dir in &s.dirs {
            dirty_bytes += dir.log.dirty_bytes().unwrap_or(0);
            dirty_files += dir.log.dirty_count().unwrap_or(0);
        }
        return (dirty_bytes, dirty_files);
    }
    for (d, dir) in s.dirs.iter().enumerate() {
        for id in dir.log.dirty_files().unwrap_or_default() {
            let ranges = dir.log.dirty(id).unwrap_or_default();
            let size_changed = dir.log.dirty_size(id).ok().flatten().is_some();
            let bytes: u64 = ranges
                .into_iter()
                .flat_map(|r| {
                    let hot_here: Vec<Range<u64>> = (r.start / EXTENT..r.end.div_ceil(EXTENT))
                        .filter(|e| hot.contains(&(d as u32, id, *e)))
                        .map(|e| e * EXTENT..(e + 1) * EXTENT)
                        .collect();
                    subtract_sorted(r, &hot_here)
                })
                .map(|r| r.end - r.start)
                .sum();
            if bytes > 0 || size_changed {
                dirty_files += 1;
            }
            dirty_bytes += bytes;
        }
    }
    (dirty_bytes, dirty_files)
}
