//! How the gateway proves itself to Entra ID's token endpoint (reference §3): exactly one of a
//! client secret, a client assertion signed with a certificate's private key, or a workload
//! identity federation token that the platform keeps fresh in a file.
//!
//! Files are re-read without a restart: certificate files whenever they change on disk (a pair
//! that does not belong together yet, mid-rotation, is not used: the previous pair stays), the
//! federated token at least every [`FEDERATED_REREAD`] and whenever Entra says the one sent has
//! expired.

use super::file_stamp::FileStamp;
use crate::config::{ClientAuthConfig, EntraConfig};
use crate::error::GatewayError;
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use x509_parser::pem::Pem;
use x509_parser::public_key::PublicKey;

/// `client_assertion_type` of both assertion kinds.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a certificate client assertion (`exp - nbf`); Entra's documented maximum is 10 min.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// The federated token file is read again at least this often. Kubernetes rotates the
/// projected token at 80% of its lifetime (at least an hour), so a 5-minute-old copy is fresh.
pub const FEDERATED_REREAD: Duration = Duration::from_secs(300);

/// Federated token files larger than this are refused unread (a JWT is a few KiB).
const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;

/// Certificate and key files larger than this are refused unread.
const MAX_PEM_FILE_BYTES: u64 = 256 * 1024;

// Defined in `config` (it is a configured value); re-exported where assertions are signed.
pub use crate::config::AssertionAlg;

/// Which file of a certificate credential a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateFile {
    /// `entra.certificate_file`
    Certificate,
    /// `entra.private_key_file`
    PrivateKey,
}

/// Why a certificate and key cannot be used. The text names the file, never key material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CertificateError {
    /// The file at fault.
    pub file: CertificateFile,
    /// What is wrong with it.
    pub message: String,
}

impl CertificateError {
    fn new(file: CertificateFile, message: impl Into<String>) -> Self {
        CertificateError {
            file,
            message: message.into(),
        }
    }

    /// The configuration key of the file at fault.
    pub fn key(&self) -> &'static str {
        match self.file {
            CertificateFile::Certificate => "entra.certificate_file",
            CertificateFile::PrivateKey => "entra.private_key_file",
        }
    }
}

/// A certificate and its RSA private key, parsed and checked to belong together.
pub struct CertificateFiles {
    x5t: String,
    x5t_s256: String,
    not_after: i64,
    key: EncodingKey,
}

impl fmt::Debug for CertificateFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateFiles")
            .field("x5t#S256", &self.x5t_s256)
            .field("private_key", &"********")
            .finish()
    }
}

impl CertificateFiles {
    /// Reads the first certificate of `cert` and the first private key of `key` (PKCS#8
    /// `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; both may be one file), and checks that the
    /// key is the certificate's, RSA and at least 2048 bits, and that the certificate has not
    /// expired.
    pub fn load(cert: &Path, key: &Path) -> Result<CertificateFiles, CertificateError> {
        use CertificateFile::{Certificate, PrivateKey};
        let cert_text = read_small(cert, MAX_PEM_FILE_BYTES)
            .map_err(|m| CertificateError::new(Certificate, m))?;
        let cert_pem = pem_blocks(&cert_text)
            .into_iter()
            .find(|p| p.label == "CERTIFICATE")
            .ok_or_else(|| {
                CertificateError::new(
                    Certificate,
                    format!("{} holds no PEM CERTIFICATE block", cert.display()),
                )
            })?;
        let x509 = cert_pem.parse_x509().map_err(|e| {
            CertificateError::new(
                Certificate,
                format!("{} is not a valid X.509 certificate: {e}", cert.display()),
            )
        })?;
        let Ok(PublicKey::RSA(cert_rsa)) = x509.public_key().parsed() else {
            return Err(CertificateError::new(
                Certificate,
                format!(
                    "the certificate in {} does not hold an RSA key",
                    cert.display()
                ),
            ));
        };
        let not_after = x509.validity().not_after.timestamp();
        if not_after < chrono::Utc::now().timestamp() {
            return Err(CertificateError::new(
                Certificate,
                format!(
                    "the certificate in {} expired at {}",
                    cert.display(),
                    x509.validity().not_after
                ),
            ));
        }

        let key_text = read_small(key, MAX_PEM_FILE_BYTES)
            .map_err(|m| CertificateError::new(PrivateKey, m))?;
        let blocks = pem_blocks(&key_text);
        if blocks.iter().any(|p| p.label == "ENCRYPTED PRIVATE KEY") {
            return Err(CertificateError::new(
                PrivateKey,
                format!(
                    "{} holds an encrypted private key; store it unencrypted in a file only the gateway can read (e.g. a mounted secret)",
                    key.display()
                ),
            ));
        }
        let pair = blocks
            .iter()
            .find_map(|p| match p.label.as_str() {
                "PRIVATE KEY" => Some(aws_lc_rs::rsa::KeyPair::from_pkcs8(&p.contents)),
                "RSA PRIVATE KEY" => Some(aws_lc_rs::rsa::KeyPair::from_der(&p.contents)),
                _ => None,
            })
            .ok_or_else(|| {
                CertificateError::new(
                    PrivateKey,
                    format!(
                        "{} holds no PEM PRIVATE KEY or RSA PRIVATE KEY block",
                        key.display()
                    ),
                )
            })?
            .map_err(|_| {
                CertificateError::new(
                    PrivateKey,
                    format!("{} does not hold a usable RSA private key", key.display()),
                )
            })?;
        if pair.public_modulus_len() < 256 {
            return Err(CertificateError::new(
                PrivateKey,
                format!("the key in {} is shorter than 2048 bits", key.display()),
            ));
        }
        let public = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(
            aws_lc_rs::signature::KeyPair::public_key(&pair),
        );
        if strip_zeros(&public.n) != strip_zeros(cert_rsa.modulus)
            || strip_zeros(&public.e) != strip_zeros(cert_rsa.exponent)
        {
            return Err(CertificateError::new(
                PrivateKey,
                format!(
                    "the key in {} is not the key of the certificate in {}",
                    key.display(),
                    cert.display()
                ),
            ));
        }
        let encoding = EncodingKey::from_rsa_pem(&key_text).map_err(|_| {
            CertificateError::new(
                PrivateKey,
                format!("{} does not hold a usable RSA private key", key.display()),
            )
        })?;
        let der = &cert_pem.contents;
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Ok(CertificateFiles {
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            not_after,
            key: encoding,
        })
    }

    /// base64url(SHA-256 of the certificate DER): the `x5t#S256` header of PS256 assertions.
    pub fn x5t_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// base64url(SHA-1 of the certificate DER): the `x5t` header of RS256 assertions.
    pub fn x5t(&self) -> &str {
        &self.x5t
    }

    /// The certificate's `notAfter`, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
}

fn pem_blocks(text: &[u8]) -> Vec<Pem> {
    Pem::iter_from_buffer(text).map_while(Result::ok).collect()
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Reads a file that must be small; the error names the file.
fn read_small(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads a workload identity federation token file: one JWT, surrounding whitespace ignored.
pub fn read_federated_token(path: &Path) -> Result<Secret, String> {
    let bytes = read_small(path, MAX_TOKEN_FILE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if token.split('.').count() != 3 {
        return Err(format!("{} does not hold a JWT", path.display()));
    }
    Ok(Secret::new(token))
}

/// The kind of client credential in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A client secret.
    Secret,
    /// A certificate client assertion.
    Certificate,
    /// A workload identity federation token.
    Federated,
}

impl CredentialKind {
    /// `secret`, `certificate` or `federated token`: how log lines and problem details name it.
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::Secret => "secret",
            CredentialKind::Certificate => "certificate",
            CredentialKind::Federated => "federated token",
        }
    }
}

/// The gateway's client credential, ready to authenticate token requests.
pub struct ClientAuth {
    client_id: String,
    kind: Kind,
}

enum Kind {
    Secret(Secret),
    Certificate(CertificateCredential),
    Federated(FederatedCredential),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientAuth({})", self.describe())
    }
}

impl ClientAuth {
    /// The credential `entra` configures; certificate files are loaded now.
    pub fn from_config(entra: &EntraConfig) -> Result<ClientAuth, CertificateError> {
        let kind = match &entra.client_auth {
            ClientAuthConfig::Secret { secret, .. } => Kind::Secret(secret.clone()),
            ClientAuthConfig::Certificate {
                certificate_file,
                private_key_file,
                assertion_alg,
                ..
            } => Kind::Certificate(CertificateCredential::new(
                certificate_file.clone(),
                private_key_file.clone(),
                *assertion_alg,
            )?),
            ClientAuthConfig::Federated { token_file, .. } => Kind::Federated(
                FederatedCredential::new(token_file.clone(), FEDERATED_REREAD),
            ),
        };
        Ok(ClientAuth {
            client_id: entra.client_id.clone(),
            kind,
        })
    }

    /// A credential re-reading the federated token file every `reread` (tests shorten it).
    pub fn federated(client_id: String, token_file: PathBuf, reread: Duration) -> ClientAuth {
        ClientAuth {
            client_id,
            kind: Kind::Federated(FederatedCredential::new(token_file, reread)),
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> CredentialKind {
        match self.kind {
            Kind::Secret(_) => CredentialKind::Secret,
            Kind::Certificate(_) => CredentialKind::Certificate,
            Kind::Federated(_) => CredentialKind::Federated,
        }
    }

    /// The credential for an operator, without secrets: kind, file and certificate thumbprint.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Secret(_) => "client secret".into(),
            Kind::Certificate(c) => format!(
                "certificate {} (x5t#S256 {})",
                c.cert_path.display(),
                c.current_thumbprint()
            ),
            Kind::Federated(f) => format!("federated token file {}", f.path.display()),
        }
    }

    /// The form fields that authenticate one request to `token_endpoint` (the assertion's
    /// `aud`): `client_secret`, or `client_assertion_type` + a fresh `client_assertion`.
    pub fn form_fields(
        &self,
        token_endpoint: &str,
    ) -> Result<Vec<(&'static str, Secret)>, GatewayError> {
        let assertion = match &self.kind {
            Kind::Secret(s) => return Ok(vec![("client_secret", s.clone())]),
            Kind::Certificate(c) => c.assertion(&self.client_id, token_endpoint)?,
            Kind::Federated(f) => f.token()?,
        };
        Ok(vec![
            ("client_assertion_type", Secret::new(CLIENT_ASSERTION_TYPE)),
            ("client_assertion", assertion),
        ])
    }

    /// Entra refused the assertion as expired: a federated token is read again before the
    /// next request, whatever its age.
    pub fn assertion_expired(&self) {
        if let Kind::Federated(f) = &self.kind {
            f.force_reread.store(true, Ordering::SeqCst);
        }
    }
}

/// The certificate pair in use and the file stamps it was loaded from.
struct LoadedPair {
    stamps: (Option<FileStamp>, Option<FileStamp>),
    files: std::sync::Arc<CertificateFiles>,
    /// Stamps of a changed pair that could not be used, so the warning is logged once.
    refused: Option<(Option<FileStamp>, Option<FileStamp>)>,
}

struct CertificateCredential {
    cert_path: PathBuf,
    key_path: PathBuf,
    alg: AssertionAlg,
    current: Mutex<LoadedPair>,
}

impl CertificateCredential {
    fn new(
        cert_path: PathBuf,
        key_path: PathBuf,
        alg: AssertionAlg,
    ) -> Result<Self, CertificateError> {
        let stamps = (FileStamp::of(&cert_path), FileStamp::of(&key_path));
        let files = CertificateFiles::load(&cert_path, &key_path)?;
        Ok(CertificateCredential {
            cert_path,
            key_path,
            alg,
            current: Mutex::new(LoadedPair {
                stamps,
                files: std::sync::Arc::new(files),
                refused: None,
            }),
        })
    }

    fn current_thumbprint(&self) -> String {
        let g = self.current.lock();
        g.files.x5t_s256.clone()
    }

    /// The pair to sign with: the files as they are now if they changed and belong together,
    /// else the pair loaded before.
    fn files(&self) -> std::sync::Arc<CertificateFiles> {
        let stamps = (
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        );
        let mut g = self.current.lock();
        if stamps != g.stamps && g.refused.as_ref() != Some(&stamps) {
            match CertificateFiles::load(&self.cert_path, &self.key_path) {
                Ok(f) => {
                    tracing::info!(certificate = %self.cert_path.display(), x5t_s256 = %f.x5t_s256,
                        previous_x5t_s256 = %g.files.x5t_s256,
                        "the certificate files changed: client assertions now use the new certificate");
                    g.files = std::sync::Arc::new(f);
                    g.stamps = stamps;
                    g.refused = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, x5t_s256 = %g.files.x5t_s256,
                        "the certificate files changed but cannot be used (yet); client assertions keep using the previous certificate");
                    g.refused = Some(stamps);
                }
            }
        }
        g.files.clone()
    }

    fn assertion(&self, client_id: &str, audience: &str) -> Result<Secret, GatewayError> {
        let files = self.files();
        let now = chrono::Utc::now().timestamp();
        if files.not_after < now {
            tracing::warn!(certificate = %self.cert_path.display(), x5t_s256 = %files.x5t_s256,
                "the gateway's certificate has expired: Entra ID will refuse it; rotate entra.certificate_file");
        }
        let mut header = Header::new(match self.alg {
            AssertionAlg::Ps256 => Algorithm::PS256,
            AssertionAlg::Rs256 => Algorithm::RS256,
        });
        header.typ = Some("JWT".into());
        match self.alg {
            AssertionAlg::Ps256 => header.x5t_s256 = Some(files.x5t_s256.clone()),
            AssertionAlg::Rs256 => header.x5t = Some(files.x5t.clone()),
        }
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs() as i64,
        });
        jsonwebtoken::encode(&header, &claims, &files.key)
            .map(Secret::new)
            .map_err(|e| {
                tracing::error!(error = %e, certificate = %self.cert_path.display(),
                    "cannot sign a client assertion with the gateway's private key");
                GatewayError::Internal
            })
    }
}

struct FederatedCredential {
    path: PathBuf,
    reread: Duration,
    current: Mutex<Option<(Secret, Instant)>>,
    force_reread: AtomicBool,
}

impl FederatedCredential {
    fn new(path: PathBuf, reread: Duration) -> Self {
        FederatedCredential {
            path,
            reread,
            current: Mutex::new(None),
            force_reread: AtomicBool::new(false),
        }
    }

    /// The token to present: the file's contents, read again when the copy is older than
    /// `reread` or Entra said it expired. A file that cannot be read keeps the last copy.
    fn token(&self) -> Result<Secret, GatewayError> {
        let mut g = self.current.lock();
        let forced = self.force_reread.swap(false, Ordering::SeqCst);
        let stale = g.as_ref().is_none_or(|(_, at)| at.elapsed() >= self.reread);
        if forced || stale {
            match read_federated_token(&self.path) {
                Ok(t) => *g = Some((t, Instant::now())),
                Err(e) if g.is_some() => {
                    tracing::warn!(error = %e, "cannot re-read the federated token file; keeping the token read before");
                }
                Err(e) => {
                    tracing::error!(error = %e,
                        "cannot read the federated token file: the gateway cannot authenticate to Entra ID");
                    return Err(GatewayError::ClientCredentialRejected {
                        credential: CredentialKind::Federated.name(),
                        retry_after_secs: 30,
                    });
                }
            }
        }
        Ok(g.as_ref()
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| Secret::new("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_federated_token_file_must_hold_a_jwt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  \n").unwrap();
        assert!(read_federated_token(&p).unwrap_err().contains("is empty"));
        std::fs::write(&p, "not-a-jwt").unwrap();
        assert!(read_federated_token(&p)
            .unwrap_err()
            .contains("does not hold a JWT"));
        std::fs::write(&p, "a.b.c\n").unwrap();
        assert_eq!(read_federated_token(&p).unwrap().expose(), "a.b.c");
        assert!(read_federated_token(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
    }

    #[test]
    fn a_federated_token_is_read_again_only_when_stale_or_refused_as_expired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "old.token.one").unwrap();
        let auth = ClientAuth::federated("c".into(), p.clone(), Duration::from_secs(3600));
        let assertion = |a: &ClientAuth| a.form_fields("aud").unwrap()[1].1.expose().to_string();
        assert_eq!(assertion(&auth), "old.token.one");
        std::fs::write(&p, "new.token.two").unwrap();
        // Fresh enough: not read again.
        assert_eq!(assertion(&auth), "old.token.one");
        auth.assertion_expired();
        assert_eq!(assertion(&auth), "new.token.two");

        let always = ClientAuth::federated("c".into(), p.clone(), Duration::ZERO);
        assert_eq!(assertion(&always), "new.token.two");
        std::fs::write(&p, "third.token.three").unwrap();
        assert_eq!(assertion(&always), "third.token.three");
    }

    #[test]
    fn an_unreadable_federated_file_keeps_the_last_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "a.b.c").unwrap();
        let auth = ClientAuth::federated("c".into(), p.clone(), Duration::ZERO);
        assert!(auth.form_fields("aud").is_ok());
        std::fs::remove_file(&p).unwrap();
        assert_eq!(auth.form_fields("aud").unwrap()[1].1.expose(), "a.b.c");
        let never_read = ClientAuth::federated("c".into(), p, Duration::ZERO);
        assert!(matches!(
            never_read.form_fields("aud"),
            Err(GatewayError::ClientCredentialRejected { .. })
        ));
    }

    fn certificate() -> (String, String, rcgen::KeyPair) {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem(), key)
    }

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn files(cert: &str, key: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        Files {
            _dir: dir,
            cert: c,
            key: k,
        }
    }

    fn auth(f: &Files, alg: AssertionAlg) -> ClientAuth {
        ClientAuth {
            client_id: "client-1".into(),
            kind: Kind::Certificate(
                CertificateCredential::new(f.cert.clone(), f.key.clone(), alg).unwrap(),
            ),
        }
    }

    fn assertion(a: &ClientAuth) -> String {
        let fields = a
            .form_fields("https://login.example/t/oauth2/v2.0/token")
            .unwrap();
        assert_eq!(fields[0].0, "client_assertion_type");
        assert_eq!(fields[0].1.expose(), CLIENT_ASSERTION_TYPE);
        assert_eq!(fields[1].0, "client_assertion");
        fields[1].1.expose().to_string()
    }

    fn verify(token: &str, key: &rcgen::KeyPair, alg: Algorithm) -> serde_json::Value {
        let decoding =
            jsonwebtoken::DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&["https://login.example/t/oauth2/v2.0/token"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &v)
            .unwrap()
            .claims
    }

    #[test]
    fn a_ps256_assertion_names_the_certificate_by_x5t_s256_and_carries_the_documented_claims() {
        let (cert, key_pem, key) = certificate();
        let f = files(&cert, &key_pem);
        let loaded = CertificateFiles::load(&f.cert, &f.key).unwrap();
        let token = assertion(&auth(&f, AssertionAlg::Ps256));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.x5t_s256.as_deref(), Some(loaded.x5t_s256()));
        assert!(header.x5t.is_none());
        let claims = verify(&token, &key, Algorithm::PS256);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        let (nbf, exp) = (
            claims["nbf"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - nbf, 600);
    }

    #[test]
    fn an_rs256_assertion_names_the_certificate_by_x5t() {
        let (cert, key_pem, key) = certificate();
        let f = files(&cert, &key_pem);
        let loaded = CertificateFiles::load(&f.cert, &f.key).unwrap();
        let token = assertion(&auth(&f, AssertionAlg::Rs256));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.x5t.as_deref(), Some(loaded.x5t()));
        assert!(header.x5t_s256.is_none());
        verify(&token, &key, Algorithm::RS256);
    }

    #[test]
    fn every_assertion_has_a_fresh_jti() {
        let (cert, key_pem, key) = certificate();
        let f = files(&cert, &key_pem);
        let a = auth(&f, AssertionAlg::Ps256);
        let jti = |t: &str| verify(t, &key, Algorithm::PS256)["jti"].clone();
        assert_ne!(jti(&assertion(&a)), jti(&assertion(&a)));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (cert, _, _) = certificate();
        let (_, other_key, _) = certificate();
        let f = files(&cert, &other_key);
        let e = CertificateFiles::load(&f.cert, &f.key).unwrap_err();
        assert_eq!(e.key(), "entra.private_key_file");
        assert!(
            e.to_string().contains("is not the key of the certificate"),
            "{e}"
        );
    }

    #[test]
    fn an_encrypted_or_missing_key_is_refused_with_its_file() {
        let (cert, _, _) = certificate();
        let f = files(
            &cert,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = CertificateFiles::load(&f.cert, &f.key).unwrap_err();
        assert!(e.to_string().contains("encrypted private key"), "{e}");
        let f = files("not a certificate", "x");
        let e = CertificateFiles::load(&f.cert, &f.key).unwrap_err();
        assert_eq!(e.key(), "entra.certificate_file");
        assert!(e.to_string().contains("no PEM CERTIFICATE block"), "{e}");
    }

    #[test]
    fn rotated_files_are_used_once_both_belong_together() {
        let (cert, key_pem, _) = certificate();
        let f = files(&cert, &key_pem);
        let a = auth(&f, AssertionAlg::Ps256);
        let thumb = |a: &ClientAuth| {
            jsonwebtoken::decode_header(assertion(a))
                .unwrap()
                .x5t_s256
                .unwrap()
        };
        let before = thumb(&a);
        let (new_cert, new_key, _) = certificate();
        std::fs::write(&f.cert, &new_cert).unwrap();
        assert_eq!(thumb(&a), before, "a half-rotated pair must not be used");
        std::fs::write(&f.key, &new_key).unwrap();
        let after = thumb(&a);
        assert_ne!(after, before);
        assert_eq!(
            after,
            CertificateFiles::load(&f.cert, &f.key).unwrap().x5t_s256()
        );
    }

    #[test]
    fn debug_output_never_shows_key_material_or_assertions() {
        let (cert, key_pem, _) = certificate();
        let f = files(&cert, &key_pem);
        let loaded = CertificateFiles::load(&f.cert, &f.key).unwrap();
        assert!(format!("{loaded:?}").contains("********"));
        let a = auth(&f, AssertionAlg::Ps256);
        let fields = a.form_fields("aud").unwrap();
        let shown = format!("{a:?} {fields:?}");
        assert!(!shown.contains(fields[1].1.expose()));
        assert!(!shown.contains("PRIVATE KEY"));
    }
}
