//! The simulated app registration's certificate and federated credentials, and Entra's checks
//! on client assertions (`certificate-credentials.md`, workload identity federation): the
//! certificate named by `x5t#S256` / `x5t` must be registered and must verify the signature;
//! `iss = sub = client_id`; `aud` is the tenant's v2 token endpoint; a lifetime of at most
//! 10 minutes; a fresh `jti`. A federated token must be signed by the simulated OIDC issuer,
//! for `api://AzureADTokenExchange`, and match a registered federated credential.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use super::super::keys::{unverified_claims, SigningKey};
use super::errors::AadError;
use super::state::{fmt_unix, now_unix, EntraState};

/// The audience of workload identity federation tokens.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Clock skew Entra tolerates on a client assertion's `nbf`.
const SKEW: i64 = 300;

/// The longest client assertion lifetime accepted (`exp - nbf`), plus the skew.
const MAX_ASSERTION_LIFETIME: i64 = 600;

/// Remembered `jti`s at most; a simulator, but bounded all the same.
const MAX_JTIS: usize = 100_000;

/// Describes a token the simulated OIDC issuer (a Kubernetes service-account issuer) mints.
#[derive(Debug, Clone)]
pub struct FederatedTokenSpec {
    /// `sub`, e.g. `system:serviceaccount:sync:sync-gateway`.
    pub subject: String,
    /// `aud`; default `api://AzureADTokenExchange`.
    pub audience: String,
    /// Lifetime from now (default 1 h).
    pub lifetime: Duration,
    /// `exp` override (Unix seconds); may be in the past.
    pub expires_at: Option<i64>,
}

impl FederatedTokenSpec {
    /// A one-hour token for `subject`, for the token-exchange audience.
    pub fn new(subject: impl Into<String>) -> Self {
        FederatedTokenSpec {
            subject: subject.into(),
            audience: TOKEN_EXCHANGE_AUDIENCE.to_string(),
            lifetime: Duration::from_secs(3600),
            expires_at: None,
        }
    }
}

/// How a token request tried to authenticate the client, as the simulator saw it (whether it
/// was accepted shows in the request's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuthSeen {
    /// `client_secret` (form or HTTP Basic).
    Secret,
    /// A certificate client assertion.
    Certificate {
        /// Its `alg`.
        alg: String,
        /// `x5t#S256` when present, else `x5t`.
        thumbprint: String,
        /// Its `aud`.
        audience: String,
    },
    /// A federated token.
    Federated {
        /// Its `jti`, to tell tokens apart.
        jti: String,
    },
}

/// A certificate uploaded to the app registration.
struct RegisteredCertificate {
    x5t: String,
    x5t_s256: String,
    key: DecodingKey,
}

/// The app registration's certificates and federated credentials, the simulated OIDC issuer,
/// and the client assertions seen (for replay detection).
#[derive(Default)]
pub(super) struct Credentials(Mutex<Registry>);

#[derive(Default)]
struct Registry {
    certificates: Vec<RegisteredCertificate>,
    /// (subject, audience) pairs of federated credentials; the issuer is the simulated one.
    federated: Vec<(String, String)>,
    issuer_key: Option<Arc<SigningKey>>,
    /// `jti`s of federated tokens the test declared expired.
    expired_federated: HashSet<String>,
    /// `jti`s of federated tokens minted so far.
    minted_federated: Vec<String>,
    seen_jtis: HashSet<String>,
}

/// base64url SHA-1 and SHA-256 thumbprints of a certificate, as `x5t` and `x5t#S256` carry them.
pub(crate) fn thumbprints(der: &[u8]) -> (String, String) {
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    (
        URL_SAFE_NO_PAD.encode(sha1.as_ref()),
        URL_SAFE_NO_PAD.encode(sha256.as_ref()),
    )
}

/// The simulated OIDC issuer (a Kubernetes service-account issuer) of federated tokens.
pub(super) fn federated_issuer(state: &EntraState) -> String {
    format!("{}/_sim/oidc", state.base)
}

/// What a `client_assertion` claims to be, read without verifying it; `None` when it is not a
/// JWT.
pub(super) fn presented(state: &EntraState, assertion: &str) -> Option<ClientAuthSeen> {
    let header = jsonwebtoken::decode_header(assertion).ok()?;
    let claims = unverified_claims(assertion)?;
    let claim = |n: &str| {
        claims
            .get(n)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some(if claim("iss") == state.client_id {
        ClientAuthSeen::Certificate {
            alg: format!("{:?}", header.alg),
            thumbprint: header.x5t_s256.or(header.x5t).unwrap_or_default(),
            audience: claim("aud"),
        }
    } else {
        ClientAuthSeen::Federated { jti: claim("jti") }
    })
}

impl Credentials {
    fn creds(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().expect("credentials lock")
    }

    /// Adds an RSA certificate (PEM) to the app registration; returns its `x5t#S256`.
    pub(super) fn register_certificate(&self, pem: &str) -> String {
        let (_, block) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
        let cert = block.parse_x509().expect("an X.509 certificate");
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() else {
            panic!("the simulated app registration takes RSA certificates only");
        };
        // DER integers carry a leading zero byte when the top bit is set; the key wants none.
        let unsigned = |b: &[u8]| b[b.iter().position(|x| *x != 0).unwrap_or(b.len())..].to_vec();
        let key =
            DecodingKey::from_rsa_raw_components(&unsigned(rsa.modulus), &unsigned(rsa.exponent));
        let (x5t, x5t_s256) = thumbprints(&block.contents);
        self.creds().certificates.push(RegisteredCertificate {
            x5t,
            x5t_s256: x5t_s256.clone(),
            key,
        });
        x5t_s256
    }

    /// Adds a federated identity credential: the simulated issuer, `subject`, audience
    /// `api://AzureADTokenExchange`.
    pub(super) fn add_federated(&self, subject: &str) {
        self.creds()
            .federated
            .push((subject.to_string(), TOKEN_EXCHANGE_AUDIENCE.to_string()));
    }

    /// The OIDC issuer's signing key.
    fn issuer_key(&self) -> Arc<SigningKey> {
        // Generated on first use: most simulators never federate.
        let existing = self.creds().issuer_key.clone();
        if let Some(k) = existing {
            return k;
        }
        let key = Arc::new(SigningKey::generate());
        self.creds().issuer_key.get_or_insert(key).clone()
    }

    /// A token of the simulated OIDC issuer, remembered so it can be expired.
    pub(super) fn mint_federated(&self, state: &EntraState, spec: &FederatedTokenSpec) -> String {
        let now = now_unix();
        let lifetime = i64::try_from(spec.lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        let exp = spec.expires_at.unwrap_or(now.saturating_add(lifetime));
        let iat = now.min(exp.saturating_sub(lifetime));
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = json!({
            "aud": [spec.audience],
            "iss": federated_issuer(state),
            "sub": spec.subject,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": jti,
            "kubernetes.io": {"namespace": "sync", "serviceaccount": {"name": "sync-gateway"}},
        });
        let key = self.issuer_key();
        let token = jsonwebtoken::encode(&key.header(), &claims, &key.encoding).expect("RS256");
        self.creds().minted_federated.push(jti);
        state.record(&token);
        token
    }

    /// Every federated token minted so far is past its `exp` from now on.
    pub(super) fn expire_federated_tokens(&self) {
        let mut c = self.creds();
        let minted = std::mem::take(&mut c.minted_federated);
        c.expired_federated.extend(minted);
    }

    /// Entra's checks on `client_assertion` for `tenant`, in order.
    pub(super) fn check_client_assertion(
        &self,
        state: &EntraState,
        tenant: &str,
        assertion: &str,
    ) -> Result<(), AadError> {
        // The gateway must never log it: the leak scan looks for it.
        state.record(assertion);
        let malformed = || {
            AadError::new(
                401,
                "invalid_client",
                50027,
                "JWT token is invalid or malformed.",
            )
        };
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
        let claims = unverified_claims(assertion).ok_or_else(malformed)?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss == state.client_id {
            self.check_certificate_assertion(state, tenant, &header, &claims, assertion)
        } else {
            self.check_federated_assertion(state, &claims, assertion)
        }
    }

    fn check_certificate_assertion(
        &self,
        state: &EntraState,
        tenant: &str,
        header: &jsonwebtoken::Header,
        claims: &Value,
        assertion: &str,
    ) -> Result<(), AadError> {
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
            return Err(AadError::new(
                401,
                "invalid_client",
                50027,
                format!(
                    "JWT token is invalid: unsupported algorithm {:?}.",
                    header.alg
                ),
            ));
        }
        let thumbprint = header
            .x5t_s256
            .clone()
            .or_else(|| header.x5t.clone())
            .unwrap_or_default();
        let key_not_found = || {
            AadError::new(
                401,
                "invalid_client",
                700027,
                format!(
                    "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                    state.client_id
                ),
            )
        };
        let verified = {
            let c = self.creds();
            let cert = c
                .certificates
                .iter()
                .find(|k| {
                    header.x5t_s256.as_deref() == Some(k.x5t_s256.as_str())
                        || header.x5t.as_deref() == Some(k.x5t.as_str())
                })
                .ok_or_else(key_not_found)?;
            let mut v = Validation::new(header.alg);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_nbf = false;
            v.validate_aud = false;
            jsonwebtoken::decode::<Value>(assertion, &cert.key, &v).is_ok()
        };
        if !verified {
            return Err(AadError::new(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]",
            ));
        }
        let claim = |n: &str| claims.get(n).and_then(Value::as_str).unwrap_or("");
        if claim("sub") != state.client_id {
            return Err(AadError::new(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
            ));
        }
        let expected_aud = format!("{}/{tenant}/oauth2/v2.0/token", state.base);
        if claim("aud") != expected_aud {
            return Err(AadError::new(
                401,
                "invalid_client",
                700023,
                format!(
                    "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials . Audience: '{}'.",
                    claim("aud")
                ),
            ));
        }
        let now = now_unix();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let nbf = claims
            .get("nbf")
            .and_then(Value::as_i64)
            .or_else(|| claims.get("iat").and_then(Value::as_i64))
            .unwrap_or(now);
        if now >= exp || nbf > now + SKEW || exp - nbf > MAX_ASSERTION_LIFETIME {
            return Err(expired_assertion(now, exp));
        }
        let jti = claim("jti");
        if uuid::Uuid::parse_str(jti).is_err() {
            return Err(AadError::new(
                401,
                "invalid_client",
                50027,
                "JWT token is invalid: the jti claim must be a GUID.",
            ));
        }
        {
            let mut c = self.creds();
            if c.seen_jtis.len() >= MAX_JTIS {
                c.seen_jtis.clear();
            }
            if !c.seen_jtis.insert(jti.to_string()) {
                return Err(AadError::new(
                    401,
                    "invalid_client",
                    50027,
                    "JWT token is invalid: the client assertion's jti was already used.",
                ));
            }
        }
        Ok(())
    }

    fn check_federated_assertion(
        &self,
        state: &EntraState,
        claims: &Value,
        assertion: &str,
    ) -> Result<(), AadError> {
        let claim = |n: &str| claims.get(n).and_then(Value::as_str).unwrap_or("");
        let iss = claim("iss");
        if iss != federated_issuer(state) || self.creds().federated.is_empty() {
            return Err(AadError::new(
                401,
                "invalid_client",
                700211,
                format!("No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."),
            ));
        }
        let key = self.issuer_key();
        let mut v = Validation::new(Algorithm::RS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        if jsonwebtoken::decode::<Value>(assertion, &key.decoding, &v).is_err() {
            return Err(AadError::new(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation against the issuer's published keys.",
            ));
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let creds: Vec<(String, String)> = self.creds().federated.clone();
        if !creds
            .iter()
            .any(|(_, aud)| audiences.contains(&aud.as_str()))
        {
            return Err(AadError::new(
                401,
                "invalid_client",
                700212,
                format!("No matching federated identity record found for presented assertion audience '{}'. Please note that the matching is done using a case-sensitive comparison. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.", audiences.join(", ")),
            ));
        }
        let sub = claim("sub");
        if !creds.iter().any(|(s, _)| s == sub) {
            return Err(AadError::new(
                401,
                "invalid_client",
                700213,
                format!("No matching federated identity record found for presented assertion subject '{sub}'. Please note that the matching is done using a case-sensitive comparison. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."),
            ));
        }
        let now = now_unix();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let jti = claim("jti").to_string();
        if now >= exp || self.creds().expired_federated.contains(&jti) {
            return Err(expired_assertion(now, exp));
        }
        Ok(())
    }
}

fn expired_assertion(now: i64, exp: i64) -> AadError {
    AadError::new(
        401,
        "invalid_client",
        700024,
        format!(
            "Client assertion is not within its valid time range. Current time: {}, assertion valid from - expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
            fmt_unix(now),
            fmt_unix(exp)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::mint::TokenSpec;
    use super::super::test_support::{obo_form, post_token, sims, OTHER_TENANT, TENANT};
    use super::super::token::CLIENT_ASSERTION_TYPE;
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    /// A certificate registered on the app and the key that signs for it.
    fn registered(s: &crate::sim::Simulators) -> (String, EncodingKey) {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let x5t_s256 = s.entra.register_certificate(&cert.pem());
        let encoding = EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap();
        (x5t_s256, encoding)
    }

    fn assertion_claims(s: &crate::sim::Simulators, tenant: &str) -> Value {
        let now = now_unix();
        json!({
            "aud": format!("{}/{tenant}/oauth2/v2.0/token", s.entra.base_url()),
            "iss": "gw-client-id",
            "sub": "gw-client-id",
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "exp": now + 600,
        })
    }

    fn sign(x5t_s256: &str, key: &EncodingKey, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::PS256);
        h.x5t_s256 = Some(x5t_s256.to_string());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    /// The OBO form with a client assertion instead of the secret.
    fn form_with(s: &crate::sim::Simulators, assertion: &str) -> Vec<(&'static str, String)> {
        let user = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        let mut f: Vec<_> = obo_form(s, &user)
            .into_iter()
            .filter(|(k, _)| *k != "client_secret")
            .collect();
        f.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_string()));
        f.push(("client_assertion", assertion.to_string()));
        f
    }

    async fn code_of(s: &crate::sim::Simulators, assertion: &str) -> (u16, i64) {
        let (st, _, b) = post_token(s, &form_with(s, assertion)).await;
        (st, b["error_codes"][0].as_i64().unwrap_or(0))
    }

    #[actix_rt::test]
    async fn a_certificate_assertion_is_checked_like_entra_checks_it() {
        let s = sims().await;
        let (x5t, key) = registered(&s);
        let good = assertion_claims(&s, TENANT);
        assert_eq!(code_of(&s, &sign(&x5t, &key, &good)).await, (200, 0));
        // The same jti again.
        assert_eq!(code_of(&s, &sign(&x5t, &key, &good)).await, (401, 50027));

        let mut other_tenant = assertion_claims(&s, OTHER_TENANT);
        other_tenant["jti"] = json!(uuid::Uuid::new_v4().to_string());
        assert_eq!(
            code_of(&s, &sign(&x5t, &key, &other_tenant)).await,
            (401, 700023)
        );

        let mut long = assertion_claims(&s, TENANT);
        long["exp"] = json!(now_unix() + 1200);
        assert_eq!(code_of(&s, &sign(&x5t, &key, &long)).await, (401, 700024));

        let mut expired = assertion_claims(&s, TENANT);
        expired["nbf"] = json!(now_unix() - 700);
        expired["exp"] = json!(now_unix() - 100);
        assert_eq!(
            code_of(&s, &sign(&x5t, &key, &expired)).await,
            (401, 700024)
        );

        let mut sub = assertion_claims(&s, TENANT);
        sub["sub"] = json!("someone-else");
        assert_eq!(code_of(&s, &sign(&x5t, &key, &sub)).await, (401, 700021));

        let unknown = sign("bm90LXJlZ2lzdGVyZWQ", &key, &assertion_claims(&s, TENANT));
        assert_eq!(code_of(&s, &unknown).await, (401, 700027));

        let (_, other_key) = registered(&s);
        let forged = sign(&x5t, &other_key, &assertion_claims(&s, TENANT));
        assert_eq!(code_of(&s, &forged).await, (401, 700027));
        // Every assertion is a secret the leak scan looks for.
        assert!(s.entra.issued_secrets().contains(&forged));
    }

    #[actix_rt::test]
    async fn a_federated_token_is_checked_against_the_issuer_and_credentials() {
        let s = sims().await;
        let sa = "system:serviceaccount:sync:gw";
        let token = s.entra.mint_federated_token(&FederatedTokenSpec::new(sa));
        // No federated credential on the app yet.
        assert_eq!(code_of(&s, &token).await, (401, 700211));
        s.entra.add_federated_credential(sa);
        assert_eq!(code_of(&s, &token).await, (200, 0));

        let mut wrong_aud = FederatedTokenSpec::new(sa);
        wrong_aud.audience = "api://something-else".into();
        let t = s.entra.mint_federated_token(&wrong_aud);
        assert_eq!(code_of(&s, &t).await, (401, 700212));
        let t = s
            .entra
            .mint_federated_token(&FederatedTokenSpec::new("system:serviceaccount:x:y"));
        assert_eq!(code_of(&s, &t).await, (401, 700213));

        s.entra.expire_federated_tokens();
        assert_eq!(code_of(&s, &token).await, (401, 700024));
        // Signed by the Entra key instead of the OIDC issuer's.
        let claims = crate::sim::keys::unverified_claims(&token).unwrap();
        let forged = s.entra.sign(&s.entra.header(), &claims);
        assert_eq!(code_of(&s, &forged).await, (401, 700027));
    }
}
