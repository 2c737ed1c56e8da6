//! Signing keys shared by the simulated Entra (which signs) and the simulated Graph (which
//! verifies), plus the DER plumbing needed to publish them the way Entra does (`x5c`, `x5t`).

use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

/// One RSA-2048 signing key with everything needed to sign, verify and publish it.
pub(crate) struct SigningKey {
    /// Key id; like Entra's, it equals `x5t` (the certificate's SHA-1 thumbprint, base64url).
    pub(crate) kid: String,
    /// base64url(SHA-1(certificate DER)).
    pub(crate) x5t: String,
    /// Modulus, base64url without padding.
    pub(crate) n: String,
    /// Public exponent, base64url without padding.
    pub(crate) e: String,
    /// Self-signed certificate, standard base64 (the `x5c` member).
    pub(crate) x5c: String,
    /// SubjectPublicKeyInfo as PEM.
    pub(crate) public_pem: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
}

impl SigningKey {
    /// Generates a fresh key. RSA keygen is the slow part of a simulator start, so callers
    /// generate once per simulator, never per token.
    pub(crate) fn generate() -> SigningKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA-2048 key generation");
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().expect("PKCS#8 encoding");
        // jsonwebtoken's aws-lc backend wants PKCS#1; its PEM parser unwraps PKCS#8 for us.
        let private_pem = pem("PRIVATE KEY", pkcs8.as_ref());
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("RSA PEM");

        let public = pair.public_key();
        let comps = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(public);
        let n = URL_SAFE_NO_PAD.encode(&comps.n);
        let e = URL_SAFE_NO_PAD.encode(&comps.e);
        let decoding = DecodingKey::from_rsa_components(&n, &e).expect("RSA components");
        let spki: PublicKeyX509Der<'static> = public.as_der().expect("SPKI encoding");
        let public_pem = pem("PUBLIC KEY", spki.as_ref());

        let cert = self_signed_cert(&pair, spki.as_ref());
        let thumb = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
        let x5t = URL_SAFE_NO_PAD.encode(thumb.as_ref());
        SigningKey {
            kid: x5t.clone(),
            x5t,
            n,
            e,
            x5c: STANDARD.encode(&cert),
            public_pem,
            encoding,
            decoding,
        }
    }

    /// The header Entra puts on the tokens it signs with this key.
    pub(crate) fn header(&self) -> Header {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        h.x5t = Some(self.x5t.clone());
        h
    }
}

/// The published keys and which one signs. Old keys stay published after a rotation, as
/// Entra keeps them in the JWKS for a while so tokens already issued stay verifiable.
pub(crate) struct KeyStore {
    inner: Mutex<KeyStoreInner>,
    /// Never published: lets tests produce well-formed tokens nobody should accept.
    unpublished: Mutex<Option<Arc<SigningKey>>>,
}

struct KeyStoreInner {
    keys: Vec<Arc<SigningKey>>,
    active: usize,
}

/// Why a token failed verification against the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VerifyError {
    /// Not three base64url JSON parts.
    Malformed,
    /// `alg` is not RS256: both services pin it and never take it from the token.
    Algorithm,
    /// No published key has the token's `kid` (or `x5t` when there is no `kid`).
    UnknownKey,
    /// The signature does not verify.
    Signature,
}

impl KeyStore {
    /// A store with one freshly generated, active key.
    pub(crate) fn new() -> KeyStore {
        KeyStore {
            inner: Mutex::new(KeyStoreInner {
                keys: vec![Arc::new(SigningKey::generate())],
                active: 0,
            }),
            unpublished: Mutex::new(None),
        }
    }

    /// The key currently used for signing.
    pub(crate) fn active(&self) -> Arc<SigningKey> {
        let g = self.inner.lock().expect("key store lock");
        Arc::clone(&g.keys[g.active])
    }

    /// Every published key, oldest first.
    pub(crate) fn published(&self) -> Vec<Arc<SigningKey>> {
        self.inner.lock().expect("key store lock").keys.clone()
    }

    /// Adds a new key and makes it the signing key; returns its kid.
    pub(crate) fn rotate(&self) -> String {
        // Generate outside the lock: keygen takes a while and handlers read the store.
        let key = Arc::new(SigningKey::generate());
        let kid = key.kid.clone();
        let mut g = self.inner.lock().expect("key store lock");
        g.keys.push(key);
        g.active = g.keys.len() - 1;
        kid
    }

    /// The never-published key, generated on first use so most simulators skip the cost.
    pub(crate) fn unpublished(&self) -> Arc<SigningKey> {
        let mut g = self.unpublished.lock().expect("key store lock");
        Arc::clone(g.get_or_insert_with(|| Arc::new(SigningKey::generate())))
    }

    /// Verifies an RS256 signature with a published key and returns the claims unchecked
    /// otherwise: each service applies its own claim rules (and error codes) afterwards.
    pub(crate) fn verify(&self, token: &str) -> Result<(Header, Value), VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::Algorithm);
        }
        // Select by kid (or x5t); jku/x5u/jwk headers are ignored, as only published keys count.
        let key = {
            let g = self.inner.lock().expect("key store lock");
            let found = match (&header.kid, &header.x5t) {
                (Some(kid), _) => g.keys.iter().find(|k| &k.kid == kid),
                (None, Some(x5t)) => g.keys.iter().find(|k| &k.x5t == x5t),
                (None, None) => None,
            };
            found.cloned().ok_or(VerifyError::UnknownKey)?
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.leeway = 0;
        match jsonwebtoken::decode::<Value>(token, &key.decoding, &v) {
            Ok(data) if data.claims.is_object() => Ok((header, data.claims)),
            Ok(_) => Err(VerifyError::Malformed),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => Err(VerifyError::Signature),
                _ => Err(VerifyError::Malformed),
            },
        }
    }
}

/// Reads a token's claims without verifying anything; only for records and diagnostics.
pub(crate) fn unverified_claims(token: &str) -> Option<Value> {
    jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
        .ok()
        .filter(Value::is_object)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---- minimal DER writer for a self-signed X.509 v3 certificate ----
// Entra publishes each key with an `x5c` certificate and `x5t` = its SHA-1 thumbprint; a
// validator that looks at either should find real values, so we build a real certificate.

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

fn utc_time(t: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    der(0x17, t.format("%y%m%d%H%M%SZ").to_string().as_bytes())
}

fn self_signed_cert(pair: &aws_lc_rs::rsa::KeyPair, spki: &[u8]) -> Vec<u8> {
    // sha256WithRSAEncryption, NULL parameters.
    const ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ];
    let version = der(0xa0, &der(0x02, &[0x02]));
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("random serial");
    serial[0] = (serial[0] & 0x7f) | 0x01; // positive and minimally encoded
    let serial = der(0x02, &serial);
    let cn = der(0x0c, b"accounts.accesscontrol.windows.net");
    let oid_cn = der(0x06, &[0x55, 0x04, 0x03]);
    let name = seq(&[&der(0x31, &seq(&[&oid_cn, &cn]))]);
    let now = chrono::Utc::now();
    let validity = seq(&[
        &utc_time(now - chrono::Duration::days(1)),
        &utc_time(now + chrono::Duration::days(365 * 5)),
    ]);
    let tbs = seq(&[&version, &serial, &ALG, &name, &validity, &name, spki]);
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        &tbs,
        &mut sig,
    )
    .expect("certificate signature");
    let mut bits = vec![0u8];
    bits.extend_from_slice(&sig);
    seq(&[&tbs, &ALG, &der(0x03, &bits)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_roundtrip() {
        let store = KeyStore::new();
        let key = store.active();
        let claims = serde_json::json!({"a": 1});
        let t = jsonwebtoken::encode(&key.header(), &claims, &key.encoding).unwrap();
        let (h, c) = store.verify(&t).unwrap();
        assert_eq!(h.kid.as_deref(), Some(key.kid.as_str()));
        assert_eq!(c, claims);
        let other = store.unpublished();
        let t2 = jsonwebtoken::encode(&key.header(), &claims, &other.encoding).unwrap();
        assert_eq!(store.verify(&t2), Err(VerifyError::Signature));
        // The certificate parses as DER with the key's SPKI inside.
        let cert = STANDARD.decode(&key.x5c).unwrap();
        assert_eq!(cert[0], 0x30);
        assert!(key.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }
}
