//! The gateway (filled in below).
