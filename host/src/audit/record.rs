//! One audit record: its canonical encoding, hash and signature.
//!
//! The hash covers a canonical JSON encoding (object keys sorted at every
//! depth, no whitespace) of everything but `hash`, `sig` and `key`, so a
//! record re-serialised by another tool still verifies, and any edit to any
//! field changes the hash. The signature is Ed25519 over the 32 hash bytes.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of the very first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1, 2, 3, ... across every file of the log.
    pub seq: u64,
    /// RFC 3339 UTC time the writer sealed the record.
    pub ts: String,
    /// The host that wrote it.
    pub host: String,
    /// What happened, e.g. `run.ended`.
    pub kind: String,
    /// The event's details.
    pub fields: Value,
    /// `hash` of the previous record ([`GENESIS`] for the first).
    pub prev: String,
    /// sha256 of the canonical encoding, hex.
    pub hash: String,
    /// Ed25519 signature of the hash bytes, hex.
    pub sig: String,
    /// Id of the signing key.
    pub key: String,
}

/// Writes `value` as canonical JSON: sorted keys, no whitespace.
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Id of a public key: the first 16 hex digits of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

impl Record {
    /// The hash the record should carry.
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = serde_json::json!({
            "seq": self.seq,
            "ts": self.ts,
            "host": self.host,
            "kind": self.kind,
            "fields": self.fields,
            "prev": self.prev,
        });
        let mut text = String::new();
        canonical(&body, &mut text);
        Sha256::digest(text.as_bytes()).into()
    }

    /// Fills `hash`, `sig` and `key` with `signer`.
    pub fn seal(&mut self, signer: &SigningKey) {
        let hash = self.compute_hash();
        self.hash = hex::encode(hash);
        self.sig = hex::encode(signer.sign(&hash).to_bytes());
        self.key = key_id(&signer.verifying_key());
    }

    /// Whether `hash` matches the content.
    pub fn hash_matches(&self) -> bool {
        hex::encode(self.compute_hash()) == self.hash
    }

    /// Whether `sig` is `key`'s signature of `hash`.
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let (Ok(hash), Ok(sig)) = (hex::decode(&self.hash), hex::decode(&self.sig)) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) else {
            return false;
        };
        key.verify(&hash, &Signature::from_bytes(&sig)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"d": [3, {"z": 1, "y": 2}], "c": "x"}});
        let mut s = String::new();
        canonical(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":"x","d":[3,{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn any_field_edit_breaks_the_hash() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut r = Record {
            seq: 1,
            ts: "2026-01-01T00:00:00Z".into(),
            host: "h".into(),
            kind: "run.ended".into(),
            fields: serde_json::json!({"outcome": "ok"}),
            prev: GENESIS.into(),
            hash: String::new(),
            sig: String::new(),
            key: String::new(),
        };
        r.seal(&key);
        assert!(r.hash_matches());
        assert!(r.signature_valid(&key.verifying_key()));
        let mut edited = r.clone();
        edited.fields["outcome"] = "trap".into();
        assert!(!edited.hash_matches());
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(!r.signature_valid(&other.verifying_key()));
    }
}
