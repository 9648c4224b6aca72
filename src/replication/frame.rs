//! Frames on the node-to-node connection:
//!
//! ```text
//! magic "TD" | version u8 | flags u8 | payload length u32 (big endian) | payload
//! ```
//!
//! The payload is one [`Message`] in postcard encoding, zstd-compressed when
//! flag bit 0 is set. With flag bit 1 the message is a write whose data,
//! left empty in it, follows it to the end of the payload: the data then
//! travels from the writer's buffer and into the reader's pwrite without a
//! copy of its own on either side. Decoding checks everything before trusting anything: a
//! frame with the wrong magic, another protocol version, unknown flags, a length
//! over the limit, or a payload that does not decode is an error that names why,
//! and the connection is closed; "not enough bytes yet" is `Ok(None)`.

use std::ops::Range;

use super::wire::{Message, WireMutation};

pub const MAGIC: [u8; 2] = *b"TD";
pub const VERSION: u8 = 3;
pub const HEADER_LEN: usize = 8;
/// Largest payload accepted (a 1 MiB write plus room for its header fields).
pub const MAX_PAYLOAD: usize = 4 << 20;

const FLAG_ZSTD: u8 = 1;
const FLAG_TRAILING: u8 = 2;
/// A trailing write's frame leaves room for the data's length, so that its
/// message encodes as a whole within [`MAX_PAYLOAD`] too.
const MAX_TRAILING: usize = MAX_PAYLOAD - 16;
/// Payloads smaller than this are never worth compressing.
const COMPRESS_MIN: usize = 4096;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a tandem frame (magic {0:02x?})")]
    BadMagic([u8; 2]),
    /// The frames' own layout, unchanged since protocol 3 (the protocol's
    /// version is agreed in the Hello).
    #[error("frame format {got} from the peer, this node reads {VERSION}")]
    Version { got: u8 },
    #[error("unknown frame flags {0:#04x}")]
    Flags(u8),
    #[error("frame of {len} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("malformed frame payload: {0}")]
    Payload(String),
}

/// Whether to compress payloads that are large enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Off,
    /// zstd, kept only when it saves at least an eighth of the bytes.
    Zstd {
        level: i32,
    },
    /// zstd for resynchronisation; live changes only while the link is
    /// slower than the disks (see `channel::Link`). Encoding compresses.
    Auto {
        level: i32,
    },
}

/// Appends the frame of `msg` to `out` (serialised in place: no copy of
/// the payload on the way).
pub fn encode(
    msg: &Message,
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = open(msg, out)?;
    let body = start + HEADER_LEN;
    let mut flags = 0;
    if let Compression::Zstd { level } | Compression::Auto { level } = compression {
        let plain = &out[body..];
        if plain.len() >= COMPRESS_MIN
            && worth_trying(plain, level)
            && let Some(z) = compress(plain, level)
            && z.len() < plain.len() - plain.len() / 8
        {
            out.truncate(body);
            out.extend_from_slice(&z);
            flags = FLAG_ZSTD;
        }
    }
    let len = out.len() - body;
    close(out, start, flags, len, MAX_PAYLOAD)
}

/// Starts a frame in `out`: room for its header, then `msg` serialised in
/// place. Returns where the frame starts.
fn open(msg: &Message, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let bad = |e: postcard::Error| FrameError::Payload(e.to_string());
    *out = postcard::to_extend(msg, std::mem::take(out)).map_err(bad)?;
    // After the message, where a release before ranges stops reading.
    if let Message::Hello {
        speaks: Some(s),
        resumes,
        ..
    } = msg
    {
        *out = postcard::to_extend(s, std::mem::take(out)).map_err(bad)?;
        if *resumes {
            *out = postcard::to_extend(resumes, std::mem::take(out)).map_err(bad)?;
        }
    }
    Ok(start)
}

/// Decodes one message from a whole payload: what follows a Hello is what
/// its sender speaks (nothing from a release before ranges; more, from a
/// later release, is left unread).
fn message(payload: &[u8]) -> Result<Message, postcard::Error> {
    let (mut msg, rest) = postcard::take_from_bytes::<Message>(payload)?;
    if let Message::Hello {
        speaks, resumes, ..
    } = &mut msg
        && !rest.is_empty()
    {
        let (s, rest) = postcard::take_from_bytes(rest)?;
        *speaks = Some(s);
        if !rest.is_empty() {
            *resumes = postcard::take_from_bytes(rest)?.0;
        }
    }
    Ok(msg)
}

/// Ends the frame started at `start` with a payload of `len` bytes: its
/// header, or an error (and nothing of it left in `out`) past `limit`.
fn close(
    out: &mut Vec<u8>,
    start: usize,
    flags: u8,
    len: usize,
    limit: usize,
) -> Result<(), FrameError> {
    if len > limit {
        out.truncate(start);
        return Err(FrameError::TooLarge { len });
    }
    out[start..start + 2].copy_from_slice(&MAGIC);
    out[start + 2] = VERSION;
    out[start + 3] = flags;
    out[start + 4..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends the frame of a write whose data is `data`, left out of `msg`
/// (a `Mutate` of a `Write` with no data of its own), up to where the data
/// goes: the frame is what `out` gained, then `data`.
pub fn encode_trailing(msg: &Message, data: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if !is_bare_write(msg) {
        return Err(FrameError::Payload(
            "only a write's data may trail its message".into(),
        ));
    }
    let start = open(msg, out)?;
    let len = out.len() - start - HEADER_LEN + data.len();
    close(out, start, FLAG_TRAILING, len, MAX_TRAILING)
}

/// A `Mutate` of a `Write` whose data is empty.
fn is_bare_write(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Mutate {
            mutation: WireMutation::Write { data, .. },
            ..
        } if data.is_empty()
    )
}

/// Payloads are compressed only if a sample from their middle compresses:
/// incompressible data (media, encrypted or already compressed files) then
/// costs one small attempt instead of a full pass. The attempt reuses the
/// thread's compressor. A payload too short for that (a resync's 4 KiB
/// pieces) is first measured by [`compressible`]: an attempt on each random
/// page took about 8% of a resync's sending thread.
fn worth_trying(plain: &[u8], level: i32) -> bool {
    const TRY: usize = 4 * 1024;
    if plain.len() < 2 * TRY {
        return compressible(&plain[plain.len() - plain.len().min(TRY)..]);
    }
    let mid = plain.len() / 2;
    let sample = &plain[mid - TRY / 2..mid + TRY / 2];
    compress(sample, level).is_some_and(|z| z.len() < TRY - TRY / 8)
}

/// `len` bytes that do not compress, the same for the same `seed`.
#[cfg(test)]
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// How much of some bytes [`compressible`] looks at: enough to tell random
/// bytes (which measure 7.6-7.7 bits each on it) from anything zstd
/// shrinks by a tenth.
pub const SAMPLE: usize = 1 << 10;

/// Whether bytes look compressible: the collision entropy of a sample's
/// bytes, as a file system's compression heuristic measures it. It costs a
/// count of the sample and one logarithm, where trying zstd on a random
/// page costs more; it is never above the sample's Shannon entropy, so it
/// errs towards trying.
pub fn compressible(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(SAMPLE)];
    if sample.is_empty() {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in sample {
        counts[*b as usize] += 1;
    }
    let n = sample.len() as f64;
    let squares: u64 = counts.iter().map(|c| *c as u64 * *c as u64).sum();
    let bits = -(squares as f64 / (n * n)).log2();
    // Random bytes measure 7.6-7.7 bits on a full sample.
    bits < 7.0
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        c.as_mut()?.1.compress(data).ok()
    })
}

/// Whether `buf` starts with a whole frame, or with one that cannot be
/// trusted (which decoding reports): only the header is looked at.
pub fn is_whole(buf: &[u8]) -> bool {
    if buf.len() < HEADER_LEN {
        return buf.len() >= 2 && buf[..2] != MAGIC;
    }
    match check_header(buf) {
        Ok(h) => buf.len() >= HEADER_LEN + h.len,
        Err(_) => true,
    }
}

/// Decodes the first frame in `buf`: the message and how many bytes it used,
/// `None` if `buf` does not hold a whole frame yet.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some((mut msg, data, used)) = decode_split(buf)? else {
        return Ok(None);
    };
    if !data.is_empty()
        && let Message::Mutate {
            mutation: WireMutation::Write { data: own, .. },
            ..
        } = &mut msg
    {
        *own = buf[data].to_vec();
    }
    Ok(Some((msg, used)))
}

/// The largest plain frame [`peek`] decodes: a write sent whole (the
/// link compresses) carries its data in the frame, and a look ahead copies
/// it. Small random writes are where looking ahead pays.
pub const PEEK_PLAIN: usize = 64 << 10;

/// The first frame in `buf` without its data, for a look ahead: the message
/// (`None` for a compressed frame, a plain one of more than [`PEEK_PLAIN`]
/// bytes — its data would be copied — or one that does not decode), the
/// length of a trailing write's data, and how many bytes the frame uses.
/// `None` if `buf` does not start with a whole, well-formed frame.
pub fn peek(buf: &[u8]) -> Option<(Option<Message>, usize, usize)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let header = check_header(buf).ok()?;
    let total = HEADER_LEN + header.len;
    let payload = buf.get(HEADER_LEN..total)?;
    let msg = if header.flags & FLAG_TRAILING != 0 {
        postcard::take_from_bytes::<Message>(payload)
            .ok()
            .map(|(m, rest)| (m, rest.len()))
    } else if header.flags & FLAG_ZSTD == 0 && payload.len() <= PEEK_PLAIN {
        message(payload).ok().map(|m| (m, 0))
    } else {
        None
    };
    Some(match msg {
        Some((m, data)) => (Some(m), data, total),
        None => (None, 0, total),
    })
}

/// [`decode`], leaving a trailing write's data in `buf`: the message (its
/// data empty), where in `buf` the data is (empty if none trails), and how
/// many bytes the frame used.
pub fn decode_split(buf: &[u8]) -> Result<Option<(Message, Range<usize>, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        // Reject garbage as early as its first bytes allow.
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(FrameError::BadMagic([buf[0], buf[1]]));
        }
        return Ok(None);
    }
    let header = check_header(buf)?;
    let total = HEADER_LEN + header.len;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_LEN..total];
    let bad = |e: postcard::Error| FrameError::Payload(e.to_string());
    if header.flags & FLAG_TRAILING != 0 {
        if header.len > MAX_TRAILING {
            return Err(FrameError::TooLarge { len: header.len });
        }
        let (msg, rest) = postcard::take_from_bytes::<Message>(payload).map_err(bad)?;
        if !is_bare_write(&msg) {
            return Err(FrameError::Payload(format!(
                "data trails a {} that is not a write without data",
                msg.kind()
            )));
        }
        return Ok(Some((msg, total - rest.len()..total, total)));
    }
    let msg = if header.flags & FLAG_ZSTD != 0 {
        let plain = zstd::bulk::decompress(payload, MAX_PAYLOAD)
            .map_err(|e| FrameError::Payload(e.to_string()))?;
        message(&plain)
    } else {
        message(payload)
    }
    .map_err(bad)?;
    Ok(Some((msg, 0..0, total)))
}

struct Header {
    flags: u8,
    len: usize,
}

fn check_header(buf: &[u8]) -> Result<Header, FrameError> {
    if buf[..2] != MAGIC {
        return Err(FrameError::BadMagic([buf[0], buf[1]]));
    }
    if buf[2] != VERSION {
        return Err(FrameError::Version { got: buf[2] });
    }
    let flags = buf[3];
    if flags & !(FLAG_ZSTD | FLAG_TRAILING) != 0 || flags == FLAG_ZSTD | FLAG_TRAILING {
        return Err(FrameError::Flags(flags));
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len });
    }
    Ok(Header { flags, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::{Time, WireAttrs, WireMutation};

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                cluster: "c".into(),
                node: "node1".into(),
                modules: vec!["app".into()],
                dirs: 2,
                generation: 7,
                verify: false,
                acks: Default::default(),
                speaks: Some(crate::versions::Speaks::this(
                    crate::replication::wire::PROTOCOL,
                )),
                resumes: false,
            },
            Message::Mutate {
                seq: 42,
                dir: 1,
                resync: false,
                times: vec![(b"d/f".to_vec(), Time { secs: 5, nanos: 6 })],
                mutation: WireMutation::Write {
                    path: Some(b"d/f".to_vec()),
                    offset: 4096,
                    data: vec![7; 100_000],
                    sync: true,
                },
            },
            Message::Mutate {
                seq: 43,
                dir: 0,
                resync: true,
                times: Vec::new(),
                mutation: WireMutation::SetAttr {
                    path: None,
                    attrs: WireAttrs {
                        mode: Some(0o600),
                        ..WireAttrs::default()
                    },
                },
            },
            Message::Ack {
                received: 43,
                applied: 42,
                durable: 40,
            },
            Message::Diverged {
                dir: 0,
                files: vec![(b"a".to_vec(), vec![(0, 4096)])],
                paths: vec![b"b/c".to_vec()],
                last: true,
                full: false,
            },
            Message::ResyncDone {
                seq: 43,
                generation: 9,
                history: vec![8, 7],
            },
            Message::Close {
                reason: "bye".into(),
            },
        ]
    }

    #[test]
    fn a_hello_that_resumes_the_stream_says_so_after_its_versions() {
        let mut hello = samples().remove(0);
        if let Message::Hello { resumes, .. } = &mut hello {
            *resumes = true;
        }
        let mut b = Vec::new();
        encode(&hello, Compression::Off, &mut b).unwrap();
        assert_eq!(decode(&b).unwrap().unwrap().0, hello);
        // A release that reads only the versions after the fields stops there.
        let (_, rest) = postcard::take_from_bytes::<Message>(&b[HEADER_LEN..]).unwrap();
        let (s, more) = postcard::take_from_bytes::<crate::versions::Speaks>(rest).unwrap();
        assert_eq!(s.range, crate::replication::wire::PROTOCOL);
        assert_eq!(more, [1]);
    }

    #[test]
    fn a_hello_says_what_it_speaks_where_a_release_before_ranges_stops_reading() {
        let hello = samples().remove(0);
        let mut b = Vec::new();
        encode(&hello, Compression::Off, &mut b).unwrap();
        // The message of a release before ranges is the same fields: it
        // reads them and leaves the rest, as its decoder did.
        let old: Message = postcard::from_bytes(&b[HEADER_LEN..]).unwrap();
        assert!(matches!(old, Message::Hello { speaks: None, .. }));
        assert_eq!(decode(&b).unwrap().unwrap().0, hello);
        assert!(matches!(
            hello,
            Message::Hello {
                speaks: Some(_),
                ..
            }
        ));
        // Its Hello, without a word of versions, reads as saying nothing.
        let mut bare = hello;
        if let Message::Hello { speaks, .. } = &mut bare {
            *speaks = None;
        }
        let mut b = Vec::new();
        encode(&bare, Compression::Off, &mut b).unwrap();
        assert_eq!(decode(&b).unwrap().unwrap().0, bare);
    }

    #[test]
    fn every_message_round_trips_with_and_without_compression() {
        for c in [Compression::Off, Compression::Zstd { level: 3 }] {
            let mut buf = Vec::new();
            for m in samples() {
                encode(&m, c, &mut buf).unwrap();
            }
            let mut at = 0;
            for m in samples() {
                let (got, used) = decode(&buf[at..]).unwrap().expect("a whole frame");
                assert_eq!(got, m);
                at += used;
            }
            assert_eq!(at, buf.len());
        }
    }

    #[test]
    fn compression_is_used_only_where_it_pays() {
        let big = &samples()[1];
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        encode(big, Compression::Off, &mut plain).unwrap();
        encode(big, Compression::Zstd { level: 3 }, &mut packed).unwrap();
        assert_eq!(packed[3], FLAG_ZSTD);
        assert!(
            packed.len() * 10 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        let mut small = Vec::new();
        encode(&samples()[3], Compression::Zstd { level: 3 }, &mut small).unwrap();
        assert_eq!(small[3], 0, "small frames stay plain");
        // A page: random bytes go plain without an attempt, text shrinks.
        let noise = noise(7, 4096);
        let text = b"0123 the page of a database, mostly alike; ".repeat(96);
        assert!(!compressible(&noise) && compressible(&text[..4096]));
        for (data, zstd) in [(&noise[..], false), (&text[..4096], true)] {
            let m = Message::Mutate {
                seq: 1,
                dir: 0,
                resync: true,
                mutation: WireMutation::Write {
                    path: Some(b"big0".to_vec()),
                    offset: 1 << 20,
                    data: data.to_vec(),
                    sync: false,
                },
                times: vec![],
            };
            let mut out = Vec::new();
            encode(&m, Compression::Zstd { level: 3 }, &mut out).unwrap();
            assert_eq!(out[3] == FLAG_ZSTD, zstd, "zstd: {zstd}");
            let (got, used) = decode(&out).unwrap().expect("a whole frame");
            assert_eq!((got, used), (m, out.len()));
        }
    }

    #[test]
    fn a_write_whose_data_trails_decodes_to_the_whole_message() {
        for (len, path, times) in [
            (0usize, None, vec![]),
            (1, Some(b"f".to_vec()), vec![]),
            (
                4096,
                Some(b"d/f".to_vec()),
                vec![(b"d".to_vec(), Time { secs: -1, nanos: 9 })],
            ),
            (1 << 20, Some(vec![0xff; 300]), vec![]),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let msg = |data: Vec<u8>| Message::Mutate {
                seq: 1 << 33,
                dir: 3,
                resync: len % 2 == 0,
                times: times.clone(),
                mutation: WireMutation::Write {
                    path: path.clone(),
                    offset: 12_345_678_901,
                    data,
                    sync: len == 1,
                },
            };
            let mut frame = vec![9, 9];
            encode_trailing(&msg(Vec::new()), &data, &mut frame).unwrap();
            frame.extend_from_slice(&data);
            frame.extend_from_slice(b"next");
            let (got, used) = decode(&frame[2..]).unwrap().expect("a whole frame");
            assert_eq!((got, used), (msg(data.clone()), frame.len() - 6));
            let (bare, at, _) = decode_split(&frame[2..]).unwrap().unwrap();
            assert_eq!((bare, &frame[2..][at]), (msg(Vec::new()), &data[..]));
        }
        let mut out = Vec::new();
        assert!(
            encode_trailing(&samples()[3], b"x", &mut out).is_err(),
            "not a write"
        );
        assert!(out.is_empty());
        // Trailing data on anything else is refused.
        let mut f = Vec::new();
        encode(&samples()[3], Compression::Off, &mut f).unwrap();
        f[3] = FLAG_TRAILING;
        assert!(matches!(decode(&f), Err(FrameError::Payload(_))));
        f[3] = FLAG_TRAILING | FLAG_ZSTD;
        assert!(matches!(decode(&f), Err(FrameError::Flags(_))));
    }

    #[test]
    fn partial_frames_ask_for_more_bytes() {
        let mut buf = Vec::new();
        encode(&samples()[1], Compression::Off, &mut buf).unwrap();
        for cut in [0, 1, 5, HEADER_LEN, buf.len() - 1] {
            assert_eq!(decode(&buf[..cut]).unwrap(), None, "cut at {cut}");
            assert!(!is_whole(&buf[..cut]), "cut at {cut}");
        }
        assert!(is_whole(&buf));
        // What cannot be trusted counts as whole: decoding it reports why.
        buf[0] = b'X';
        assert!(is_whole(&buf[..2]) && is_whole(&buf));
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let mut good = Vec::new();
        encode(&samples()[3], Compression::Off, &mut good).unwrap();

        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(FrameError::BadMagic(_))));
        assert!(matches!(
            decode(b"GET / HTTP/1.1"),
            Err(FrameError::BadMagic(_))
        ));

        let mut b = good.clone();
        b[2] = VERSION + 1;
        assert_eq!(decode(&b), Err(FrameError::Version { got: VERSION + 1 }));

        let mut b = good.clone();
        b[3] = 0x80;
        assert_eq!(decode(&b), Err(FrameError::Flags(0x80)));

        let mut b = good.clone();
        b[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&b), Err(FrameError::TooLarge { .. })));

        // A payload that is not a message, and a "compressed" one that is not zstd.
        let mut b = good[..HEADER_LEN].to_vec();
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(decode(&b), Err(FrameError::Payload(_))));
        b[3] = FLAG_ZSTD;
        assert!(matches!(decode(&b), Err(FrameError::Payload(_))));
    }

    #[test]
    fn random_and_damaged_bytes_never_panic_the_decoder() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut good = Vec::new();
        encode(&samples()[1], Compression::Zstd { level: 1 }, &mut good).unwrap();
        for _ in 0..20_000 {
            // Flip a few bytes of a valid frame, or make one up from scratch.
            let mut b = if next() % 2 == 0 {
                good.clone()
            } else {
                (0..(next() % 64)).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !b.is_empty() {
                    let i = (next() as usize) % b.len();
                    b[i] ^= next() as u8 | 1;
                }
            }
            let _ = decode(&b);
        }
    }

    #[test]
    fn corrupted_frames_are_refused_or_decoded_never_trusted_blindly() {
        // Flip, cut and extend valid frames at random: decoding must return an
        // error, "not complete", or a message — never panic or read past the end.
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for m in samples() {
            for c in [Compression::Off, Compression::Zstd { level: 1 }] {
                let mut good = Vec::new();
                encode(&m, c, &mut good).unwrap();
                for _ in 0..300 {
                    let mut bad = good.clone();
                    match rnd() % 3 {
                        0 => {
                            for _ in 0..1 + rnd() % 8 {
                                let i = (rnd() as usize) % bad.len();
                                bad[i] ^= 1 << (rnd() % 8);
                            }
                        }
                        1 => bad.truncate((rnd() as usize) % bad.len()),
                        _ => bad.extend((0..rnd() % 64).map(|_| rnd() as u8)),
                    }
                    let _ = decode(&bad);
                }
            }
        }
        // Pure noise with a valid header.
        for _ in 0..500 {
            let len = (rnd() % 4096) as usize;
            let mut f = vec![b'T', b'D', VERSION, (rnd() % 2) as u8];
            f.extend_from_slice(&(len as u32).to_be_bytes());
            f.extend((0..len).map(|_| rnd() as u8));
            assert!(
                !matches!(decode(&f), Ok(None)),
                "a whole frame is never 'incomplete'"
            );
        }
    }
}
