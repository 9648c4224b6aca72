//! The HTTP client of etcd's quorum and of the `http` checker: reqwest,
//! with rustls on ring (the provider the rest of tandem uses), trusting
//! only the CA it is given, and presenting a client certificate if asked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a client cannot be made; the files are named.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: not a PEM certificate: {source}", path.display())]
    NotCertificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: not a PEM private key: {source}", path.display())]
    NotKey {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{} and {}: {source}", cert.display(), key.display())]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{}", describe(.0))]
    Build(reqwest::Error),
}

/// A client for `https://` URLs signed by `ca` (and plain `http://`), with
/// `cert` (certificate, key) as its own. Files are read now: errors name
/// them.
pub fn client(
    ca: Option<&Path>,
    cert: Option<&(PathBuf, PathBuf)>,
) -> Result<reqwest::Client, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|source| ClientError::NotCertificate {
                path: ca.into(),
                source,
            })?;
        if certs.is_empty() {
            return Err(ClientError::NoCertificate(ca.into()));
        }
        for c in certs {
            roots.add(c).map_err(|source| ClientError::BadCertificate {
                path: ca.into(),
                source,
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots);
    let tls = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, k) = chain_and_key(cert, key)?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|source| ClientError::ClientAuth {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // Probes and quorum calls go to the address given, never elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(ClientError::Build)
}

/// A certificate chain and its private key from PEM files; errors name the
/// file.
pub fn chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClientError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ClientError::NotCertificate {
            path: cert.into(),
            source,
        })?;
    let k = PrivateKeyDer::from_pem_file(key).map_err(|source| ClientError::NotKey {
        path: key.into(),
        source,
    })?;
    Ok((chain, k))
}

/// The error with its causes, as one line: reqwest's own says only
/// "error sending request".
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s2 = s.to_string();
        if !out.contains(&s2) {
            out.push_str(": ");
            out.push_str(&s2);
        }
        source = s.source();
    }
    out
}
