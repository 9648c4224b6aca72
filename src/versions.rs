//! Which versions of its protocols this release speaks. Each protocol (the
//! replication link, the heartbeats, the witness) has a range; two ends use
//! the highest version they share, so a node of the previous release and
//! one of this release keep working together during a rolling upgrade. The
//! policy: a release speaks at least the previous release's protocols.

use serde::{Deserialize, Serialize};

/// This release of tandem, as the nodes tell each other.
pub const SOFTWARE: &str = env!("CARGO_PKG_VERSION");

/// The versions of one protocol a node speaks, lowest to highest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub lowest: u8,
    pub highest: u8,
}

impl Range {
    pub const fn new(lowest: u8, highest: u8) -> Range {
        Range { lowest, highest }
    }

    /// The highest version both ends speak.
    pub fn shared(self, theirs: Range) -> Result<u8, NoShared> {
        let v = self.highest.min(theirs.highest);
        if v >= self.lowest.max(theirs.lowest) {
            Ok(v)
        } else {
            Err(NoShared { ours: self, theirs })
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lowest == self.highest {
            write!(f, "{}", self.lowest)
        } else {
            write!(f, "{}-{}", self.lowest, self.highest)
        }
    }
}

/// Two ends with no version in common: the older one must be upgraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no protocol version in common: this node speaks {ours}, the peer {theirs}; upgrade {}",
    if theirs.highest < ours.lowest { "the peer" } else { "this node" }
)]
pub struct NoShared {
    pub ours: Range,
    pub theirs: Range,
}

/// What one end says of itself beside its protocol's fields: its range
/// and its release. A node of a release before ranges says nothing, which
/// reads as the one version it spoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speaks {
    pub range: Range,
    pub software: String,
}

impl Speaks {
    pub fn this(range: Range) -> Speaks {
        Speaks {
            range,
            software: SOFTWARE.into(),
        }
    }
}

/// What two ends agreed on: the version in use and the other end's release
/// (`None`: a release that does not say).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreed {
    pub protocol: u8,
    pub peer_software: Option<String>,
}

/// Agrees with what the other end said, or with the one version `before`
/// that a release before ranges spoke when it said nothing.
pub fn agree(ours: Range, theirs: Option<&Speaks>, before: u8) -> Result<Agreed, NoShared> {
    let range = theirs.map_or(Range::new(before, before), |s| s.range);
    Ok(Agreed {
        protocol: ours.shared(range)?,
        peer_software: theirs.map(|s| s.software.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ends_speak_the_highest_version_they_share() {
        let r = |a, b| Range::new(a, b);
        assert_eq!(r(3, 4).shared(r(3, 4)), Ok(4));
        assert_eq!(r(3, 4).shared(r(3, 3)), Ok(3));
        assert_eq!(r(4, 5).shared(r(3, 4)), Ok(4));
        assert_eq!(r(3, 3).shared(r(3, 5)), Ok(3));
    }

    #[test]
    fn no_shared_version_names_both_ranges_and_the_node_to_upgrade() {
        let e = Range::new(5, 6).shared(Range::new(3, 4)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no protocol version in common: this node speaks 5-6, the peer 3-4; upgrade the peer"
        );
        let e = Range::new(3, 3).shared(Range::new(4, 5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no protocol version in common: this node speaks 3, the peer 4-5; upgrade this node"
        );
    }

    #[test]
    fn a_peer_that_says_nothing_speaks_the_version_before_ranges() {
        let a = agree(Range::new(3, 4), None, 3).unwrap();
        assert_eq!((a.protocol, a.peer_software), (3, None));
        assert!(agree(Range::new(4, 5), None, 3).is_err());
        let b = agree(Range::new(3, 4), Some(&Speaks::this(Range::new(3, 4))), 3).unwrap();
        assert_eq!(b.protocol, 4);
        assert_eq!(b.peer_software.as_deref(), Some(SOFTWARE));
    }
}
