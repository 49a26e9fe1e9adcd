//! Fuzzing the reflector's own pure helpers that see hostile input: session ids from URLs,
//! file-store paths, the `[time,seq,` prefix of stored messages, and the journal replayed
//! from a file of arbitrary records (a damaged or crafted journal must not crash the
//! server at startup). The property: no panic; the replayed journal keeps a valid prefix.
//!
//! `SYNQ_FUZZ_CASES=1000000 cargo test --release -p synq-reflector --test fuzz` for a long
//! run; the default is small enough for CI.

#[path = "../../synq-protocol/tests/fuzz_json/mod.rs"]
mod fuzz_json;

use fuzz_json::*;
use proptest::prelude::*;
use synq_reflector::journal::{Journal, message_time_seq};
use synq_reflector::store::BlobKey;
use synq_reflector::{Durability, valid_session_id};

/// One journal record: tag, body, and whether its length and CRC are right.
fn record() -> BoxedStrategy<Vec<u8>> {
    let header = object(vec![
        ("timeline", mostly(string())),
        ("tove", mostly(string())),
        ("tick_ms", mostly(number())),
        ("delay_ms", mostly(number())),
        ("app_id", mostly(string())),
        ("persistent_id", mostly(string())),
        ("developer_id", mostly(string())),
    ])
    .prop_map(|b| (b'H', b));
    let message =
        array(vec![number(), number(), string(), number(), string()]).prop_map(|b| (b'M', b));
    let snapshot = object(vec![
        ("time_raw", mostly(string())),
        ("time", mostly(number())),
        ("seq", mostly(number())),
        ("url", mostly(string())),
    ])
    .prop_map(|b| (b'S', b));
    let time = number().prop_map(|b| (b'T', b));
    let other = (any::<u8>(), garbage());
    (
        prop_oneof![2 => header, 4 => message, 2 => snapshot, 1 => time, 1 => other],
        proptest::option::weighted(0.05, any::<u32>()),
        proptest::option::weighted(0.05, any::<u32>()),
    )
        .prop_map(|((tag, body), bad_len, bad_crc)| {
            let body = body.into_bytes();
            let len = bad_len.unwrap_or(body.len() as u32);
            let crc = bad_crc.unwrap_or_else(|| crc32fast::hash(&body));
            let mut r = vec![tag];
            r.extend_from_slice(&len.to_le_bytes());
            r.extend_from_slice(&crc.to_le_bytes());
            r.extend_from_slice(&body);
            r
        })
        .boxed()
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn url_and_path_checks_never_panic(s in prop_oneof![garbage(), string(), "[a-zA-Z0-9_./~=+@-]{0,1100}"]) {
        if valid_session_id(&s) {
            prop_assert!(!s.contains('/') && !s.starts_with('.') && s.len() <= 128);
        }
        if let Ok(k) = BlobKey::parse(&s) {
            prop_assert!(!k.as_str().split('/').any(|seg| seg.is_empty() || seg.starts_with('.')));
        }
        let _ = message_time_seq(&s);
    }

    #[test]
    fn stored_message_prefixes_never_panic(m in prop_oneof![
        array(vec![number(), number(), string()]), value(), garbage()
    ]) {
        let _ = message_time_seq(&m);
    }

    /// A journal of arbitrary records, maybe cut anywhere, replays without a panic, and
    /// opening it again gives the same state (the torn tail was cut off the first time).
    #[test]
    fn any_journal_replays(
        records in proptest::collection::vec(record(), 0..12),
        cut in proptest::option::weighted(0.2, any::<usize>()),
    ) {
        let mut bytes: Vec<u8> = records.concat();
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("journal"), &bytes).expect("write");
        let (j, first) = Journal::open(dir.path(), Durability::Write).expect("open");
        drop(j);
        let (_, again) = Journal::open(dir.path(), Durability::Write).expect("reopen");
        prop_assert_eq!(first, again);
    }
}
