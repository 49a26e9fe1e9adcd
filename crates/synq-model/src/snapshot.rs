//! Snapshot bytes and their hash.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Bumped when the snapshot envelope itself changes.
const FORMAT: &[u8; 4] = b"SQM1";

/// SHA-256 of a snapshot's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotHash(pub [u8; 32]);

impl SnapshotHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, as it appears in votes and error messages.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for SnapshotHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SnapshotHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotHash({})", self.to_hex())
    }
}

/// A serialized replica state.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub bytes: Vec<u8>,
    pub hash: SnapshotHash,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("len", &self.bytes.len())
            .field("hash", &self.hash)
            .finish()
    }
}

/// Why a snapshot could not be taken or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the model state could not be serialized: {0}")]
    Encode(postcard::Error),
    #[error("not a synq model snapshot (bad header)")]
    Format,
    #[error("the snapshot is corrupt or truncated: {0}")]
    Decode(postcard::Error),
    #[error("the snapshot is of model {found:?}, this replica runs {expected:?}")]
    Schema { expected: String, found: String },
}

impl Snapshot {
    pub(crate) fn encode<T: Serialize>(state: &T) -> Result<Self, SnapshotError> {
        let mut bytes = FORMAT.to_vec();
        bytes = postcard::to_extend(state, bytes).map_err(SnapshotError::Encode)?;
        let hash = SnapshotHash::of(&bytes);
        Ok(Self { bytes, hash })
    }

    /// The schema a snapshot was taken with (its first field), read before the rest so
    /// that a snapshot of another model is reported as such, not as corrupt.
    pub(crate) fn schema(bytes: &[u8]) -> Result<String, SnapshotError> {
        let body = bytes.strip_prefix(FORMAT).ok_or(SnapshotError::Format)?;
        let (schema, _) = postcard::take_from_bytes(body).map_err(SnapshotError::Decode)?;
        Ok(schema)
    }

    pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
        let body = bytes.strip_prefix(FORMAT).ok_or(SnapshotError::Format)?;
        let (state, rest) = postcard::take_from_bytes(body).map_err(SnapshotError::Decode)?;
        if !rest.is_empty() {
            return Err(SnapshotError::Format);
        }
        Ok(state)
    }
}
