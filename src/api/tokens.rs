//! The API's bearer tokens: each has a name and a role, and is kept only as
//! a SHA-256 hash in `STATE_DIR/api-tokens.json` (mode 0600). The token
//! itself is shown once, when it is created.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Monitor,
    /// Reads and commands.
    Admin,
}

/// A role's name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: monitor or admin")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "monitor" => Ok(Role::Monitor),
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownRole(s.into())),
        }
    }
}

/// Why the tokens could not be read, created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: not a token list: {source}", path.display())]
    NotAList {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token name {0:?}: 1 to 64 characters from A-Z a-z 0-9 _ . - @")]
    BadName(String),
    #[error("a token named {0:?} exists: revoke it first, or choose another name")]
    Exists(String),
    #[error("no randomness for the token")]
    NoRandomness,
    #[error("no token named {0:?}")]
    NoSuchToken(String),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Monitor => "monitor",
            Role::Admin => "admin",
        })
    }
}

/// One token as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// The tokens of a node.
pub struct Tokens {
    path: PathBuf,
}

/// Where a node keeps its tokens.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("api-tokens.json")
}

/// What marks a tandem token (and keeps it apart from other secrets).
const PREFIX: &str = "tdm_";

/// Compared in constant time: how much of a guess's hash matched leaks
/// nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Tokens {
    pub fn new(path: PathBuf) -> Tokens {
        Tokens { path }
    }

    pub fn list(&self) -> Result<Vec<Entry>, TokenError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| TokenError::NotAList {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(TokenError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn save(&self, list: &[Entry]) -> Result<(), TokenError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source: std::io::Error| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(list).expect("tokens serialise"))
            .and_then(|()| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Creates a token named `name`; returns it (shown once, kept hashed).
    pub fn create(&self, name: &str, role: Role) -> Result<String, TokenError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b));
        if !valid {
            return Err(TokenError::BadName(name.into()));
        }
        let mut list = self.list()?;
        if list.iter().any(|e| e.name == name) {
            return Err(TokenError::Exists(name.into()));
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| TokenError::NoRandomness)?;
        let token = format!("{PREFIX}{}", B64.encode(secret));
        list.push(Entry {
            name: name.into(),
            role,
            sha256: sha256(&token),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        self.save(&list)?;
        Ok(token)
    }

    /// Removes the token named `name`.
    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let mut list = self.list()?;
        let before = list.len();
        list.retain(|e| e.name != name);
        if list.len() == before {
            return Err(TokenError::NoSuchToken(name.into()));
        }
        self.save(&list)
    }

    /// The entry `token` is, if any. Read from the file each time: a token
    /// revoked from the command line stops working at once.
    pub fn check(&self, token: &str) -> Option<Entry> {
        if !token.starts_with(PREFIX) {
            return None;
        }
        let h = sha256(token);
        self.list()
            .ok()?
            .into_iter()
            .find(|e| same(e.sha256.as_bytes(), h.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_shown_once_kept_hashed_and_revoked_at_once() {
        let d = tempfile::tempdir().unwrap();
        let t = Tokens::new(path(d.path()));
        let admin = t.create("ops", Role::Admin).unwrap();
        let mon = t.create("grafana", Role::Monitor).unwrap();
        assert!(admin.starts_with("tdm_") && admin != mon);
        let stored = std::fs::read_to_string(path(d.path())).unwrap();
        assert!(
            !stored.contains(&admin[4..]),
            "the token itself is not stored"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(d.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(t.check(&admin).unwrap().role, Role::Admin);
        assert_eq!(t.check(&mon).unwrap().name, "grafana");
        assert!(t.check("tdm_guess").is_none() && t.check("").is_none());
        assert!(matches!(
            t.create("ops", Role::Monitor),
            Err(TokenError::Exists(n)) if n == "ops"
        ));
        assert!(matches!(
            t.create("bad name", Role::Monitor),
            Err(TokenError::BadName(_))
        ));
        t.revoke("ops").unwrap();
        assert!(t.check(&admin).is_none());
        let e = t.revoke("ops").unwrap_err();
        assert!(e.to_string().contains("no token named"), "{e}");
        assert_eq!(t.list().unwrap().len(), 1);
    }
}
