//! The embedded model (filled in below).
