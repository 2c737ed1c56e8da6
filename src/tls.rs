//! HTTPS on the listener (`server.tls`), for deployments without a mesh or an ingress that
//! terminates TLS. TLS 1.2 and 1.3 only (rustls has nothing older). The certificate and key files
//! are read again when they change, so a rotation (cert-manager, a renewed Secret) needs no
//! restart; a half-written pair (a key that does not belong to the certificate, a file that does
//! not parse) is not used: the previous pair keeps serving, and the log says why.

use crate::config::TlsConfig;
use crate::credentials::FileStamp;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The files are looked at (two `stat`s) at most this often, not on every handshake.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why the listener's certificate cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct TlsError {
    /// The configuration key naming the file at fault.
    pub key: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The rustls configuration for `tls`, with a certificate that follows its files.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = ReloadingCert::load(tls, provider.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            key: "server.tls",
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The current certificate, loaded again when its files change.
#[derive(Debug)]
struct ReloadingCert {
    certificate_file: PathBuf,
    private_key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked: Instant,
}

impl ReloadingCert {
    fn load(tls: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<ReloadingCert, TlsError> {
        let stamps = (
            FileStamp::of(&tls.certificate_file),
            FileStamp::of(&tls.private_key_file),
        );
        let current = certified_key(&tls.certificate_file, &tls.private_key_file, &provider)?;
        Ok(ReloadingCert {
            certificate_file: tls.certificate_file.clone(),
            private_key_file: tls.private_key_file.clone(),
            provider,
            state: Mutex::new(State {
                current: Arc::new(current),
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock();
        if state.checked.elapsed() < CHECK_EVERY {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let stamps = (
            FileStamp::of(&self.certificate_file),
            FileStamp::of(&self.private_key_file),
        );
        if stamps != state.stamps {
            match certified_key(
                &self.certificate_file,
                &self.private_key_file,
                &self.provider,
            ) {
                Ok(k) => {
                    tracing::info!(certificate = %self.certificate_file.display(),
                        "the listener's certificate changed on disk; serving the new one");
                    state.current = Arc::new(k);
                    state.stamps = stamps;
                }
                // Half-rotated, or being written: keep serving the previous pair and look
                // again at the next check (the stamps stay the old ones).
                Err(e) => tracing::warn!(error = %e,
                    "the listener's certificate files changed but cannot be used yet; still serving the previous certificate"),
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified_key(
    certificate_file: &Path,
    private_key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError {
        key: "server.tls.certificate_file",
        path: certificate_file.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(certificate_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key_file).map_err(|e| TlsError {
        key: "server.tls.private_key_file",
        path: private_key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError {
        key: "server.tls.private_key_file",
        path: private_key_file.display().to_string(),
        reason: format!("cannot be used with the certificate: {e}"),
    })
}
