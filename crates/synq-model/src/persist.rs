//! Data a model keeps across versions of its code (Croquet's `persistSession`).
//!
//! A session id includes the model's `SCHEMA`, so a new version of an app starts new
//! sessions. What a model hands to [`crate::Cx::persist`] is saved (by the client, sealed,
//! in the reflector's file store) and given to the first session of a later version of
//! the same room, in [`crate::Model::init_persisted`]. It is JSON, so that a newer model can
//! read what an older one wrote (missing fields take their `serde(default)`), tagged with
//! the writer's `SCHEMA` for models that must tell versions apart.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest persisted data a client saves or loads (its JSON, before sealing).
pub const MAX_PERSISTED_BYTES: usize = 4 * 1024 * 1024;

/// Why persisted data could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("the data cannot be written as JSON: {0}")]
    Encode(serde_json::Error),
    #[error("persisted data is not valid: {0}")]
    Decode(serde_json::Error),
    #[error("persisted data is {0} bytes, more than {MAX_PERSISTED_BYTES}")]
    TooLarge(usize),
}

/// Persisted data: the `SCHEMA` of the model that wrote it, the reflector time it was
/// written at, and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    schema: String,
    time: u64,
    data: serde_json::Value,
}

impl Persisted {
    pub(crate) fn new(
        schema: &str,
        time: u64,
        data: &impl Serialize,
    ) -> Result<Persisted, PersistError> {
        Ok(Persisted {
            schema: schema.to_owned(),
            time,
            data: serde_json::to_value(data).map_err(PersistError::Encode)?,
        })
    }

    /// The `SCHEMA` of the model that wrote it.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Reflector time (of the writing session) at which it was written, ms.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// The data, read as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PersistError> {
        T::deserialize(&self.data).map_err(PersistError::Decode)
    }

    /// The bytes a client saves. `serde_json` writes maps in key order (no
    /// `preserve_order`), so every replica writes the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PersistError> {
        let bytes = serde_json::to_vec(self).map_err(PersistError::Encode)?;
        if bytes.len() > MAX_PERSISTED_BYTES {
            return Err(PersistError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Persisted, PersistError> {
        if bytes.len() > MAX_PERSISTED_BYTES {
            return Err(PersistError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(PersistError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct V1 {
        count: u32,
        names: Vec<String>,
    }

    #[derive(Deserialize)]
    struct V2 {
        count: u64,
        #[serde(default)]
        color: String,
    }

    #[test]
    fn a_newer_model_reads_what_an_older_one_wrote() {
        let p = Persisted::new(
            "counter/1",
            1234,
            &V1 {
                count: 7,
                names: vec!["Ann".into()],
            },
        )
        .unwrap();
        let bytes = p.to_bytes().unwrap();
        let back = Persisted::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.schema(), "counter/1");
        assert_eq!(back.time(), 1234);
        let v2: V2 = back.decode().unwrap();
        assert_eq!((v2.count, v2.color.as_str()), (7, ""));
        assert!(Persisted::from_bytes(b"{\"schema\":1}").is_err());
        assert!(matches!(
            Persisted::from_bytes(&vec![b' '; MAX_PERSISTED_BYTES + 1]),
            Err(PersistError::TooLarge(_))
        ));
    }
}
