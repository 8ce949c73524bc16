//! One audit record (format 2): its line, its hash, and the checkpoint
//! signature.
//!
//! A record is one JSON object on one line: `seq`, `ts`, `kind`, `fields`
//! and `prev`, the sha256 of the previous record's line. The hash of a
//! record is the sha256 of its exact line bytes (without the newline), so
//! any change to any byte breaks the chain at the next record. Records
//! carry no signature of their own: a `checkpoint` record signs the chain
//! hash (its own `prev`), which covers every record before it.
//!
//! The first record of a log is its genesis (`seq` 0, kind
//! [`GENESIS_KIND`], `prev` all zeros) and names the public key that signs
//! the first checkpoints. Format 1 lines (with a per-record `sig`) are
//! recognised only to be refused by name.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of the genesis record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// This crate's log format.
pub const FORMAT: u64 = 2;

/// Kind of the first record of a log.
pub const GENESIS_KIND: &str = "log.created";
/// Kind of a signed checkpoint record.
pub const CHECKPOINT_KIND: &str = "checkpoint";
/// Kind of a key rotation record.
pub const ROTATION_KIND: &str = "key.rotated";
/// Kind of the record `chassis audit recover` writes over a lost tail.
pub const RECOVERED_KIND: &str = "log.recovered";
/// Kind of the record a retention pruning writes (see `audit.retain_days`).
pub const PRUNED_KIND: &str = "log.pruned";

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 0 (the genesis), 1, 2, ... across every file of the log.
    pub seq: u64,
    /// RFC 3339 UTC time the writer wrote the record.
    pub ts: String,
    /// What happened, e.g. `run.ended`.
    pub kind: String,
    /// The event's details.
    pub fields: Value,
    /// sha256 (hex) of the previous record's line ([`GENESIS`] for seq 0).
    pub prev: String,
}

/// The hash of a record: sha256 of its line, without the newline.
pub fn line_hash(line: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(line.as_ref()).into()
}

/// A line's hash as the log spells it (64 lowercase hex digits), kept
/// inline: the writer makes one per record and verify one per line, so a
/// heap string for each was a measurable share of both.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexHash([u8; 64]);

impl HexHash {
    /// The hash of `line` ([`line_hash`]), hex.
    pub fn of(line: impl AsRef<[u8]>) -> Self {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(line_hash(line), &mut hex).expect("32 bytes are 64 hex digits");
        Self(hex)
    }

    /// The `prev` of the genesis record ([`GENESIS`]).
    pub fn genesis() -> Self {
        Self([b'0'; 64])
    }

    /// The hex digits, as bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::fmt::Debug for HexHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for HexHash {
    fn eq(&self, other: &str) -> bool {
        self.0 == *other.as_bytes()
    }
}

/// Whether `line` is a format 1 record (each one signed, with `sig` and
/// `key`), which this version does not verify or continue.
pub fn is_format_1(line: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| {
            v.as_object()
                .map(|o| o.contains_key("sig") && o.contains_key("hash"))
        })
        .unwrap_or(false)
}

/// Id of a public key: the first 16 hex digits of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The bytes a checkpoint's signature covers: its position, time, the chain
/// hash through the record before it, the record count and the key id, so
/// a checkpoint cannot be replayed at another place in the log.
pub fn checkpoint_message(seq: u64, ts: &str, count: u64, chain: &str, key: &str) -> Vec<u8> {
    format!(
        "chassis-audit-v2 checkpoint\nseq={seq}\nts={ts}\ncount={count}\nchain={chain}\nkey={key}"
    )
    .into_bytes()
}

/// The fields of a checkpoint record at `seq` (whose `prev` is `chain`),
/// signed by `signer`.
pub fn checkpoint_fields(seq: u64, ts: &str, chain: &str, signer: &SigningKey) -> Value {
    let key = key_id(&signer.verifying_key());
    let sig = signer.sign(&checkpoint_message(seq, ts, seq, chain, &key));
    serde_json::json!({
        "count": seq,
        "chain": chain,
        "key": key,
        "sig": hex::encode(sig.to_bytes()),
    })
}

/// Why a checkpoint record does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointFault {
    /// A field is missing or malformed.
    Malformed(String),
    /// It names a different key than the one expected to sign here.
    WrongKey {
        /// The key it names.
        named: String,
        /// The key that should sign here.
        expected: String,
    },
    /// Its signed position, count or chain do not match where it sits.
    Misplaced(String),
    /// The signature does not verify.
    BadSignature,
}

impl std::fmt::Display for CheckpointFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointFault::Malformed(e) => write!(f, "malformed checkpoint: {e}"),
            CheckpointFault::WrongKey { named, expected } => write!(
                f,
                "checkpoint names key {named}, but key {expected} signs here"
            ),
            CheckpointFault::Misplaced(e) => write!(
                f,
                "checkpoint does not belong here ({e}): an older checkpoint was put in its place, or the records before it changed"
            ),
            CheckpointFault::BadSignature => {
                write!(f, "forged checkpoint: its signature does not verify")
            }
        }
    }
}

impl Record {
    /// Checks this checkpoint record against `key`: signed by it, for this
    /// very position (`seq`, `count`) and chain (`prev`).
    pub fn check_checkpoint(&self, key: &VerifyingKey) -> Result<(), CheckpointFault> {
        let field = |name: &str| {
            self.fields[name]
                .as_str()
                .ok_or_else(|| CheckpointFault::Malformed(format!("missing `{name}`")))
        };
        let named = field("key")?;
        let expected = key_id(key);
        if named != expected {
            return Err(CheckpointFault::WrongKey {
                named: named.to_string(),
                expected,
            });
        }
        let chain = field("chain")?;
        let count = self.fields["count"]
            .as_u64()
            .ok_or_else(|| CheckpointFault::Malformed("missing `count`".into()))?;
        if chain != self.prev {
            return Err(CheckpointFault::Misplaced(
                "its chain hash is not the hash of the record before it".into(),
            ));
        }
        if count != self.seq {
            return Err(CheckpointFault::Misplaced(format!(
                "it counts {count} records before it, but sits at record {}",
                self.seq
            )));
        }
        let sig = hex::decode(field("sig")?)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
            .ok_or_else(|| CheckpointFault::Malformed("`sig` is not 64 hex bytes".into()))?;
        key.verify(
            &checkpoint_message(self.seq, &self.ts, count, chain, named),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| CheckpointFault::BadSignature)
    }

    /// The key id a checkpoint record names, if it is one.
    pub fn checkpoint_key(&self) -> Option<&str> {
        (self.kind == CHECKPOINT_KIND)
            .then(|| self.fields["key"].as_str())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint_at(seq: u64, prev: &str, key: &SigningKey) -> Record {
        let ts = "2026-01-01T00:00:00Z".to_string();
        Record {
            seq,
            fields: checkpoint_fields(seq, &ts, prev, key),
            ts,
            kind: CHECKPOINT_KIND.into(),
            prev: prev.into(),
        }
    }

    #[test]
    fn a_hex_hash_spells_the_line_hash_as_the_log_does() {
        let line = r#"{"seq":0}"#;
        assert_eq!(HexHash::of(line).as_str(), hex::encode(line_hash(line)));
        assert_eq!(HexHash::genesis().as_str(), GENESIS);
        assert!(HexHash::of(line) == *hex::encode(line_hash(line)).as_str());
        assert!(HexHash::of(line) != *GENESIS);
    }

    #[test]
    fn any_byte_of_a_line_changes_its_hash() {
        let a = r#"{"seq":1,"ts":"t","kind":"run.ended","fields":{"outcome":"ok"},"prev":"00"}"#;
        let b = a.replace("ok", "trap");
        assert_ne!(line_hash(a), line_hash(&b));
    }

    #[test]
    fn a_checkpoint_verifies_only_where_and_by_whom_it_was_signed() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let cp = checkpoint_at(10, &"ab".repeat(32), &key);
        cp.check_checkpoint(&key.verifying_key()).unwrap();

        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(matches!(
            cp.check_checkpoint(&other.verifying_key()),
            Err(CheckpointFault::WrongKey { .. })
        ));
        // Replayed at a later position, it no longer holds.
        let mut moved = cp.clone();
        moved.seq = 20;
        moved.fields["count"] = 20.into();
        assert_eq!(
            moved.check_checkpoint(&key.verifying_key()),
            Err(CheckpointFault::BadSignature)
        );
        let mut rechained = cp.clone();
        rechained.prev = "cd".repeat(32);
        assert!(matches!(
            rechained.check_checkpoint(&key.verifying_key()),
            Err(CheckpointFault::Misplaced(_))
        ));
    }

    #[test]
    fn format_1_lines_are_recognised() {
        let v1 = r#"{"seq":1,"ts":"t","host":"h","kind":"k","fields":{},"prev":"0","hash":"1","sig":"2","key":"3"}"#;
        assert!(is_format_1(v1));
        assert!(!is_format_1(
            r#"{"seq":1,"ts":"t","kind":"k","fields":{},"prev":"0"}"#
        ));
    }
}
