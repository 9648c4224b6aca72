//! `[heartbeat]` and `[replication]`.

use std::time::Duration;

use super::super::raw::{RawHeartbeat, RawReplication, Section, Str};
use super::super::report::Report;
use super::super::settings::{Compression, Heartbeat, Replication};
use super::fields;

const HEARTBEAT_PORT: u16 = 7400;
const INTERVAL_MS: i64 = 200;
const TIMEOUT_MS: i64 = 3000;

const REPLICATION_PORT: u16 = 7401;
const PEER_TIMEOUT_MS: i64 = 5000;
const CHUNK_SIZE_KIB: i64 = 64;
const ASYNC_MAX_LAG_MIB: i64 = 64;

pub(super) fn heartbeat(r: &mut Report, section: &Section<RawHeartbeat>) -> Option<Heartbeat> {
    let raw = section.value.as_ref()?;
    let before = r.count();
    let port = fields::port(r, &raw.port, "heartbeat.port", HEARTBEAT_PORT);
    let interval = fields::int(
        r,
        &raw.interval_ms,
        "heartbeat.interval_ms",
        INTERVAL_MS,
        50,
        i64::MAX,
    );
    let timeout = fields::int(
        r,
        &raw.timeout_ms,
        "heartbeat.timeout_ms",
        TIMEOUT_MS,
        300,
        i64::MAX,
    );
    if let (Some(interval), Some(timeout)) = (interval, timeout) {
        if timeout <= 2 * interval {
            let (span, value) = match &raw.timeout_ms {
                Some(v) => (Some(v.span()), timeout.to_string()),
                None => (section.span.clone(), format!("the default {timeout}")),
            };
            r.error(
                "heartbeat.timeout_ms",
                span,
                format!(
                    "{value} must be more than twice heartbeat.interval_ms ({interval}), \
                     or a single late heartbeat would declare the peer lost"
                ),
            );
        }
    }
    (r.count() == before).then(|| Heartbeat {
        port: port.expect("validated"),
        interval: millis(interval),
        timeout: millis(timeout),
    })
}

const COMPRESSIONS: [(&str, Compression); 3] = [
    ("auto", Compression::Auto),
    ("zstd", Compression::Zstd),
    ("off", Compression::Off),
];

pub(super) fn replication(
    r: &mut Report,
    section: &Section<RawReplication>,
    heartbeat_port: Option<u16>,
) -> Option<Replication> {
    let raw = section.value.as_ref()?;
    let before = r.count();
    let port = fields::port(r, &raw.port, "replication.port", REPLICATION_PORT);
    if let (Some(port), Some(hb)) = (port, heartbeat_port) {
        if port == hb {
            let span = raw.port.as_ref().map(|v| v.span()).or(section.span.clone());
            r.error(
                "replication.port",
                span,
                format!("{port} is also heartbeat.port"),
            );
        }
    }
    let peer_timeout = fields::int(
        r,
        &raw.peer_timeout_ms,
        "replication.peer_timeout_ms",
        PEER_TIMEOUT_MS,
        100,
        i64::MAX,
    );
    let compression = fields::choice(
        r,
        &raw.compression,
        "replication.compression",
        &COMPRESSIONS,
        Compression::Auto,
    );
    let chunk = fields::int(
        r,
        &raw.chunk_size_kib,
        "replication.chunk_size_kib",
        CHUNK_SIZE_KIB,
        4,
        4096,
    );
    if let (Some(kib), Some(v)) = (chunk, &raw.chunk_size_kib) {
        if !(kib as u64).is_power_of_two() {
            r.error(
                "replication.chunk_size_kib",
                Some(v.span()),
                format!("{kib} must be a power of two (4, 8, 16 … 4096)"),
            );
        }
    }
    // Up to 1 TiB: more is no bound at all, and the byte count must fit in 64 bits.
    let lag = fields::int(
        r,
        &raw.async_max_lag_mib,
        "replication.async_max_lag_mib",
        ASYNC_MAX_LAG_MIB,
        1,
        1 << 20,
    );
    // Sizes a second: "50MiB", "1GB", bytes; "0" for none.
    let max_rate = rate(
        r,
        &raw.resync_max_rate,
        "replication.resync_max_rate",
        0,
        "no cap",
    );
    let min_rate = rate(
        r,
        &raw.resync_min_rate,
        "replication.resync_min_rate",
        RESYNC_MIN_RATE,
        "none: the resync waits while the application writes",
    );
    if let (Some(max), Some(min), Some(v)) = (max_rate, min_rate, &raw.resync_min_rate)
        && max > 0
        && min > max
    {
        r.error(
            "replication.resync_min_rate",
            Some(v.span()),
            format!(
                "{:?} is above replication.resync_max_rate ({max} bytes a second): the minimum cannot exceed the cap",
                v.get_ref()
            ),
        );
    }
    (r.count() == before).then(|| Replication {
        port: port.expect("validated"),
        peer_timeout: millis(peer_timeout),
        compression: compression.expect("validated"),
        chunk_size: chunk.expect("validated") as u32 * 1024,
        async_max_lag: lag.expect("validated") as u64 * 1024 * 1024,
        resync_max_rate: max_rate.expect("validated"),
        resync_min_rate: min_rate.expect("validated"),
    })
}

/// What a resync keeps while the application writes, unless configured: a
/// tenth of a 1 Gb/s link.
pub const RESYNC_MIN_RATE: u64 = 12 << 20;

/// A rate field: `default` when absent, refused (naming `field`) unless a
/// size; 0 means `zero`.
fn rate(r: &mut Report, v: &Option<Str>, field: &str, default: u64, zero: &str) -> Option<u64> {
    let Some(v) = v else { return Some(default) };
    let n = super::snapshots::bytes(v.get_ref());
    if n.is_none() {
        r.error(
            field,
            Some(v.span()),
            format!(
                "{:?} is not a rate (bytes a second: \"50MiB\", \"1GB\", a number of bytes, or \"0\" for {zero})",
                v.get_ref()
            ),
        );
    }
    n
}

/// Only called once the value has been validated as non-negative.
pub(super) fn millis(v: Option<i64>) -> Duration {
    Duration::from_millis(v.expect("validated") as u64)
}

pub(super) fn seconds(v: Option<i64>) -> Duration {
    Duration::from_secs(v.expect("validated") as u64)
}
