//! Cluster credentials and mutually authenticated TLS between the two nodes.
//!
//! `tandem init` makes a private CA for the cluster, a certificate and key per
//! node signed by it, and the heartbeat key, in one directory that is copied to
//! both nodes. Each side of a connection proves it holds a node key of this
//! cluster, and then must be exactly the expected peer (compared with the peer's
//! certificate from the directory), so a stolen certificate of another cluster,
//! a self-made one, or a node talking to itself is refused at the handshake.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Every node certificate carries this name; identities are told apart by
/// comparing the whole certificate with the cluster directory's copy.
pub const NODE_SAN: &str = "tandem-node";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: already exists (use --force to replace the cluster's credentials)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("node {0:?} has no certificate in the credentials directory")]
    UnknownNode(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn cert_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.pem"))
}

pub fn key_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.key"))
}

pub fn heartbeat_key_path(dir: &Path) -> PathBuf {
    dir.join("heartbeat.key")
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn random_hex(n: usize) -> Result<String, TlsError> {
    let path = Path::new("/dev/urandom");
    let mut buf = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open(path).map_err(io(path))?, &mut buf)
        .map_err(io(path))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates the cluster's credentials in `dir` and returns the files written.
/// Refuses to replace existing ones unless `force`: new credentials lock out a
/// node that still has the old ones.
pub fn init(
    dir: &Path,
    cluster: &str,
    nodes: &[(String, Vec<String>)],
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut files = vec![
        dir.join("ca.pem"),
        dir.join("ca.key"),
        heartbeat_key_path(dir),
    ];
    for (n, _) in nodes {
        files.push(cert_path(dir, n));
        files.push(key_path(dir, n));
    }
    for f in &files {
        if f.exists() {
            if !force {
                return Err(TlsError::Exists(f.clone()));
            }
            std::fs::remove_file(f).map_err(io(f))?;
        }
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("tandem cluster {cluster} CA"),
    );
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_file(&files[0], ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&files[1], ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &files[2],
        format!("{}\n", random_hex(32)?).as_bytes(),
        0o600,
    )?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for (n, addresses) in nodes {
        let key = rcgen::KeyPair::generate()?;
        // The node's addresses too, so that an operator's client (the API,
        // the console) can check the node by the address it dials.
        let mut sans = vec![NODE_SAN.to_string()];
        sans.extend(addresses.iter().cloned());
        let mut params = rcgen::CertificateParams::new(sans)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{cluster}/{n}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        write_file(&cert_path(dir, n), cert.pem().as_bytes(), 0o644)?;
        write_file(&key_path(dir, n), key.serialize_pem().as_bytes(), 0o600)?;
    }
    Ok(files)
}

/// What one node needs to talk to its peer.
pub struct Credentials {
    pub node: String,
    pub peer: String,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    peer_cert: CertificateDer<'static>,
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    if !path.exists() {
        return Err(TlsError::Io {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    CertificateDer::from_pem_file(path).map_err(|_| TlsError::Pem {
        path: path.to_path_buf(),
        what: "certificate",
    })
}

impl Credentials {
    pub fn load(dir: &Path, node: &str, peer: &str) -> Result<Self, TlsError> {
        let key_file = key_path(dir, node);
        if !cert_path(dir, node).exists() {
            return Err(TlsError::UnknownNode(node.to_string()));
        }
        let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|_| TlsError::Pem {
            path: key_file.clone(),
            what: "private key",
        })?;
        Ok(Self {
            node: node.to_string(),
            peer: peer.to_string(),
            ca: read_cert(&dir.join("ca.pem"))?,
            cert: read_cert(&cert_path(dir, node))?,
            key,
            peer_cert: read_cert(&cert_path(dir, peer))
                .map_err(|_| TlsError::UnknownNode(peer.to_string()))?,
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        let mut p = rustls::crypto::ring::default_provider();
        // AES-128-GCM first: every replicated byte is encrypted once and
        // decrypted once, and it does a tenth less work per byte than
        // AES-256 here, for a margin no attacker of a link can use.
        p.cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        Arc::new(p)
    }

    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let c = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(cfg)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(cfg)?;
        Ok(Arc::new(c))
    }

    /// This node's certificate without asking clients for one: for the
    /// load balancers' health probes, which read only a status.
    pub fn server_config_anonymous(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let c = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(cfg)?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(cfg)?;
        Ok(Arc::new(c))
    }

    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let c = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(cfg)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(cfg)?;
        Ok(Arc::new(c))
    }

    /// The name every node certificate is issued for.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(NODE_SAN).expect("a valid DNS name")
    }

    /// After a handshake: the peer presented exactly the expected peer's certificate.
    pub fn is_peer(&self, presented: Option<&[CertificateDer<'_>]>) -> bool {
        presented
            .and_then(|c| c.first())
            .is_some_and(|c| c.as_ref() == self.peer_cert.as_ref())
    }
}
