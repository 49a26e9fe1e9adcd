//! Who is in a session.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A participant's view id. The runtime stamps it on every input from what the reflector
/// delivered; models never read it from a payload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ViewId(pub String);

impl ViewId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ViewId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}
