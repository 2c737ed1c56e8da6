//! The hash chain and the signed checkpoints.
//!
//! Every line is `{"seq":N,"prev":"<hex>",` followed by the rest of the record's JSON object,
//! where `prev` is the SHA-256 of the previous line's exact bytes (without its newline). The
//! writer adds both fields itself, so the chain does not depend on what kinds of record exist.
//! A `checkpoint` line carries an Ed25519 signature over its own `seq`, `prev`, `time` and
//! `key_id`: since `prev` commits to everything before it, the signature does too.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::Engine;
use schemars::JsonSchema;
use std::path::Path;

/// The `prev` of the very first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// SHA-256 of `line` (without its newline).
pub fn hash(line: &[u8]) -> [u8; 32] {
    // aws-lc's assembly SHA-256: `verify` hashes every line of a possibly huge trail.
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub use crate::domain::hex;

/// The fields [`Tail::link_into`] puts first on every line, whatever its kind. Never built:
/// `link_into` writes these bytes itself (it runs once per record on the writer thread), and
/// this type describes them for the generated schema (`super::schema`).
#[derive(JsonSchema)]
#[allow(dead_code)] // read only by the schema derive
pub(crate) struct ChainFields {
    /// Position in the chain, from 1, continuing across files and restarts.
    #[schemars(range(min = 1))]
    seq: u64,
    /// SHA-256 of the previous record's exact bytes (64 zeros before the first).
    #[schemars(pattern(super::formats::SHA256_HEX))]
    prev: String,
    /// The replica that wrote the record (`state.replica_id`, by default the pod name): the
    /// chain is that replica's. Absent from records written before replica ids existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::formats::REPLICA_ID), length(min = 1, max = 63))]
    replica: Option<String>,
}

/// Where the chain stands: the last durable record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The last record's `seq` (0 when the trail is empty).
    pub seq: u64,
    /// The SHA-256 of the last record's bytes ([`GENESIS`] when empty).
    pub hash: [u8; 32],
}

impl Tail {
    /// An empty trail.
    pub const EMPTY: Tail = Tail {
        seq: 0,
        hash: GENESIS,
    };

    /// Links `body` (a serialized JSON object) after this tail: returns the line (without a
    /// newline) and moves the tail onto it.
    pub fn link(&mut self, body: &[u8]) -> Vec<u8> {
        let mut line = Vec::with_capacity(body.len() + 96);
        self.link_into(body, &mut line);
        line
    }

    /// [`Tail::link`], appending the line (without a newline) to `out`, so that a batch is
    /// built in one buffer without a copy per record.
    pub fn link_into(&mut self, body: &[u8], out: &mut Vec<u8>) {
        self.link_member_into(body, b"", out);
    }

    /// [`Tail::link_into`], with `member` (`"name":value`, already serialized, or empty) put
    /// right after `prev`: the writer's `replica`, which every record of its chain carries.
    pub fn link_member_into(&mut self, body: &[u8], member: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let seq = self.seq + 1;
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(b",\"prev\":\"");
        out.extend_from_slice(hex(&self.hash).as_bytes());
        out.push(b'"');
        if !member.is_empty() {
            out.push(b',');
            out.extend_from_slice(member);
        }
        // `body` is `{...}`: splice its members after ours. Every caller passes a serialized
        // object (`AuditLog` refuses anything else before it gets here); should one ever not,
        // the chain still gets a valid line, never a panic or a broken record.
        let rest: &[u8] = match body {
            [b'{', .., b'}'] => &body[1..],
            _ => {
                tracing::error!(
                    bytes = body.len(),
                    "an audit record body is not a JSON object; linked as an empty one"
                );
                b"}"
            }
        };
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        self.seq = seq;
        self.hash = hash(&out[start..]);
    }
}

/// The text a checkpoint's signature covers.
pub fn checkpoint_message(seq: u64, prev: &str, time: &str, key_id: &str) -> Vec<u8> {
    format!("sync-gateway audit checkpoint v1\n{seq}\n{prev}\n{time}\n{key_id}").into_bytes()
}

/// A short, stable name for an Ed25519 public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    hex(&hash(public_key)[..8])
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not what was expected.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads one PEM block from `path`, with a maker of errors that name the file.
fn read_pem(path: &Path) -> Result<(pem::Pem, impl Fn(&str) -> KeyError), KeyError> {
    let p = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| KeyError::Read {
        path: p.clone(),
        source,
    })?;
    let format = move |message: &str| KeyError::Format {
        path: p.clone(),
        message: message.into(),
    };
    let pem = pem::parse(&text).map_err(|_| format("not a PEM file"))?;
    Ok((pem, format))
}

/// The Ed25519 key that signs checkpoints. Its `Debug` never shows the key.
pub struct CheckpointSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner({})", self.key_id)
    }
}

impl CheckpointSigner {
    /// Loads a PKCS#8 `PRIVATE KEY` PEM file (as written by `sync-gateway audit keygen` or
    /// `openssl genpkey -algorithm ed25519`).
    pub fn from_pem_file(path: &Path) -> Result<CheckpointSigner, KeyError> {
        let (pem, format) = read_pem(path)?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(format(
                "expected an Ed25519 \"PRIVATE KEY\" (PKCS#8) PEM block",
            ));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
            .map_err(|_| format("not an Ed25519 PKCS#8 private key"))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> CheckpointSigner {
        let key_id = key_id(pair.public_key().as_ref());
        CheckpointSigner { pair, key_id }
    }

    /// The public key's id, written into each checkpoint.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The base64 signature of a checkpoint.
    pub fn sign(&self, seq: u64, prev: &str, time: &str) -> String {
        let sig = self
            .pair
            .sign(&checkpoint_message(seq, prev, time, &self.key_id));
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// A new key pair: (private key PEM, public key PEM).
pub fn generate_key_pair() -> Result<(String, String), String> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| "cannot generate a key".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| "generated key rejected")?;
    let private = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
    let public = public_key_pem(pair.public_key().as_ref());
    Ok((private, public))
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A raw Ed25519 public key as a `PUBLIC KEY` PEM block.
pub fn public_key_pem(raw: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

/// A public key that checks checkpoint signatures.
#[derive(Debug, Clone)]
pub struct CheckpointVerifier {
    raw: Vec<u8>,
    key_id: String,
}

impl CheckpointVerifier {
    /// From a `PUBLIC KEY` PEM (as printed by `audit keygen`), or a `PRIVATE KEY` PEM whose
    /// public half is used.
    pub fn from_pem(path: &Path) -> Result<CheckpointVerifier, KeyError> {
        let (pem, format) = read_pem(path)?;
        let raw = match pem.tag() {
            "PUBLIC KEY" => {
                let der = pem.contents();
                if der.len() != 44 || der[..12] != SPKI_PREFIX {
                    return Err(format("not an Ed25519 public key"));
                }
                der[12..].to_vec()
            }
            "PRIVATE KEY" => CheckpointSigner::from_pem_file(path)?.public_key(),
            _ => return Err(format("expected a \"PUBLIC KEY\" PEM block")),
        };
        Ok(CheckpointVerifier::from_raw(raw))
    }

    /// From a raw 32-byte key.
    pub fn from_raw(raw: Vec<u8>) -> CheckpointVerifier {
        let key_id = key_id(&raw);
        CheckpointVerifier { raw, key_id }
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// True when `sig_b64` is this key's signature of the checkpoint.
    pub fn verify(&self, seq: u64, prev: &str, time: &str, sig_b64: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig_b64) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(&checkpoint_message(seq, prev, time, &self.key_id), &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linking_puts_seq_and_prev_first_and_chains_the_exact_bytes() {
        let mut t = Tail::EMPTY;
        let a = t.link(br#"{"kind":"x"}"#);
        assert_eq!(
            String::from_utf8(a.clone()).unwrap(),
            format!(r#"{{"seq":1,"prev":"{}","kind":"x"}}"#, "0".repeat(64))
        );
        let b = t.link(b"{}");
        let text = String::from_utf8(b.clone()).unwrap();
        assert_eq!(text, format!(r#"{{"seq":2,"prev":"{}"}}"#, hex(&hash(&a))));
        assert_eq!(t.hash, hash(&b));
        assert_eq!(t.seq, 2);
    }

    #[test]
    fn a_checkpoint_signature_verifies_only_for_its_own_fields() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_key_pair().unwrap();
        std::fs::write(dir.path().join("k"), private).unwrap();
        std::fs::write(dir.path().join("k.pub"), public).unwrap();
        let s = CheckpointSigner::from_pem_file(&dir.path().join("k")).unwrap();
        let v = CheckpointVerifier::from_pem(&dir.path().join("k.pub")).unwrap();
        assert_eq!(s.key_id(), v.key_id());
        let sig = s.sign(7, "ab", "2026-01-01T00:00:00Z");
        assert!(v.verify(7, "ab", "2026-01-01T00:00:00Z", &sig));
        assert!(!v.verify(8, "ab", "2026-01-01T00:00:00Z", &sig));
        assert!(!v.verify(7, "ac", "2026-01-01T00:00:00Z", &sig));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_linked_as_an_empty_one_without_panicking() {
        let mut t = Tail::EMPTY;
        for body in [&b""[..], b"null", b"{"] {
            let line = t.link(body);
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        }
        assert_eq!(t.seq, 3);
    }
}
