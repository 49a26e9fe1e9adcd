//! Generators of hostile JSON text for the fuzz tests (proptest strategies that render
//! straight to text, so that they can also produce what no serializer would: numbers out
//! of every range, lone surrogates, duplicate keys, nesting past the parser's limit).
//!
//! Shared by `synq-protocol/tests/fuzz.rs` and `synq-client/tests/fuzz.rs` (included there
//! with `#[path]`): both sides of the wire parse the same kinds of frames.

#![allow(dead_code)]

use proptest::prelude::*;

/// Cases per fuzz test: `SYNQ_FUZZ_CASES` (default small, so that CI stays fast).
pub fn cases(default: u32) -> u32 {
    std::env::var("SYNQ_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A proptest config for a fuzz test: `cases` cases, no regression files written into
/// the source tree (failures found are turned into named tests instead).
pub fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// Field names of the reflector protocol, both directions.
pub const KEYS: &[&str] = &[
    "id",
    "action",
    "args",
    "tags",
    "version",
    "apiKey",
    "user",
    "ticks",
    "tick",
    "delay",
    "scale",
    "name",
    "appId",
    "url",
    "persistentId",
    "developerId",
    "sdk",
    "codeHash",
    "tove",
    "leaveDelay",
    "dormantDelay",
    "heraldUrl",
    "flags",
    "rawtime",
    "microverse",
    "location",
    "debounce",
    "msgID",
    "time",
    "seq",
    "hash",
    "dissident",
    "proof",
    "data",
    "messages",
    "timeline",
    "reflector",
    "snapshotTime",
    "snapshotSeq",
    "persisted",
    "what",
    "users",
    "active",
    "total",
    "joined",
    "left",
    "tally",
    "tuttiKey",
    "sendTime",
    "tallyTarget",
    "missingClients",
    "_size",
    "code",
    "msg",
    "options",
    "level",
    "vote",
    "viewId",
];

/// Actions of both directions, and a few near misses.
pub const ACTIONS: &[&str] = &[
    "JOIN",
    "SEND",
    "TUTTI",
    "SNAP",
    "SAVE",
    "PULSE",
    "LOG",
    "PING",
    "TICKS",
    "SYNC",
    "RECV",
    "TICK",
    "REQU",
    "INFO",
    "PONG",
    "join",
    "",
    "JOIN\u{0}",
    "_CHUNK",
];

/// Number tokens at the edges of every range the code converts to (u32 seqs, u64 times,
/// f64 durations), and some that are not valid JSON numbers for serde_json (`1e400`).
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "1",
    "-1",
    "0.5",
    "-0.5",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1e400",
    "-1e400",
    "5e-324",
    "1e-400",
    "4294967295",
    "4294967296",
    "-4294967296",
    "4294967280",
    "4294967281",
    "134217728",
    "9007199254740992",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "123456789012345678901234567890123456789",
    "1E3",
    "2e1",
    "20",
    "1000",
    "1e-7",
    "0.001",
];

pub fn number() -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::sample::select(EDGE_NUMBERS).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<u32>().prop_map(|n| n.to_string()),
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
    ]
    .boxed()
}

/// A JSON string literal (mostly valid; sometimes with escapes serde rejects).
pub fn string() -> BoxedStrategy<String> {
    let lit = |s: String| serde_json::to_string(&s).unwrap_or_else(|_| "\"\"".into());
    prop_oneof![
        4 => "[a-zA-Z0-9_\\-./:@=+~]{0,24}".prop_map(lit),
        2 => any::<String>().prop_map(lit),
        1 => proptest::sample::select(&[
            r#""\ud800""#, r#""\udfff\ud800""#, r#""\u0000""#, r#""\"""#, r#""\\""#,
            r#""é✓😀""#, r#""\x""#, "\"unterminated", r#""""#, r#""synq1-""#,
        ][..])
        .prop_map(str::to_owned),
        // Long strings: 60 KB ids and payloads, as an attacker sends.
        1 => (1usize..70_000, "[a-z]").prop_map(move |(n, c)| lit(c.repeat(n))),
    ]
    .boxed()
}

pub fn leaf() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just("null".to_owned()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        3 => number(),
        3 => string(),
    ]
    .boxed()
}

/// `{"k":v,…}` from rendered pairs (duplicates and all).
pub fn render_object(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap_or_default()))
        .collect();
    format!("{{{}}}", body.join(","))
}

pub fn render_array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

pub fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-zA-Z_]{0,8}",
    ]
    .boxed()
}

/// Any JSON value, nested a few levels, with protocol field names as keys.
pub fn value() -> BoxedStrategy<String> {
    leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| render_array(&v)),
                proptest::collection::vec((key(), inner), 0..6).prop_map(|f| render_object(&f)),
            ]
        })
        .boxed()
}

/// Nesting deeper than serde_json's recursion limit (128), in arrays or objects.
pub fn deep() -> BoxedStrategy<String> {
    (1usize..600, any::<bool>(), leaf())
        .prop_map(|(depth, objects, inner)| {
            let (open, close) = if objects {
                ("{\"args\":", "}")
            } else {
                ("[", "]")
            };
            format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
        })
        .boxed()
}

/// A value that is usually `good` and sometimes anything at all.
pub fn mostly(good: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![3 => good, 1 => value(), 1 => leaf()].boxed()
}

/// An object with some of `fields` (each present or not), in a shuffled order, sometimes
/// with a duplicated field and a stray one.
pub fn object(fields: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    let parts: Vec<BoxedStrategy<Option<(String, String)>>> = fields
        .into_iter()
        .map(|(k, s)| {
            proptest::option::weighted(0.85, s.prop_map(move |v| (k.to_owned(), v))).boxed()
        })
        .collect();
    (
        parts,
        proptest::option::weighted(0.1, (key(), value())),
        any::<bool>(),
    )
        .prop_flat_map(|(present, extra, dup)| {
            let mut fields: Vec<(String, String)> = present.into_iter().flatten().collect();
            if dup && let Some(f) = fields.first().cloned() {
                fields.push(f);
            }
            fields.extend(extra);
            Just(fields).prop_shuffle()
        })
        .prop_map(|f| render_object(&f))
        .boxed()
}

/// An array whose first elements are near-valid (`shape`), then maybe more of anything;
/// sometimes cut short.
pub fn array(shape: Vec<BoxedStrategy<String>>) -> BoxedStrategy<String> {
    let n = shape.len();
    (shape, proptest::collection::vec(value(), 0..3), 0..=n + 2)
        .prop_map(move |(mut items, extra, keep)| {
            if keep < n {
                items.truncate(keep);
            } else {
                items.extend(extra);
            }
            render_array(&items)
        })
        .boxed()
}

/// Text that is not JSON at all, or almost: random text, lossy UTF-8 bytes, JSON-ish
/// token soup.
pub fn garbage() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..256)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[\\[\\]{}\",:0-9a-zA-Z.eE+\\- \\\\]{0,200}",
        value().prop_flat_map(|v| {
            let len = v.len();
            (Just(v), 0..=len).prop_map(|(v, cut)| {
                // A valid value cut anywhere (on a char boundary).
                let mut cut = cut;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v[..cut].to_owned()
            })
        }),
    ]
    .boxed()
}

/// `{"id":…,"action":…,"args":…,"tags":…}` with the given args for the given actions.
pub fn envelope(
    actions: BoxedStrategy<String>,
    args: BoxedStrategy<String>,
    tags: BoxedStrategy<String>,
) -> BoxedStrategy<String> {
    object(vec![
        ("id", mostly(string())),
        ("action", mostly(actions)),
        ("args", args),
        ("tags", tags),
    ])
}

/// An action name as a JSON string.
pub fn action_lit(names: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(names)
        .prop_map(|a| serde_json::to_string(a).unwrap_or_default())
        .boxed()
}

// ---- reflector → client frames ----

/// An entry of `joined`/`left`: `{"id":…,"data":…}` or anything.
pub fn user_entry() -> BoxedStrategy<String> {
    mostly(object(vec![
        ("id", mostly(string())),
        ("data", mostly(string())),
    ]))
}

/// `{"what":"users",…}` as the reflector announces joins and leaves.
pub fn users_payload() -> BoxedStrategy<String> {
    object(vec![
        ("what", mostly(Just("\"users\"".to_owned()).boxed())),
        ("active", mostly(number())),
        ("total", mostly(number())),
        (
            "joined",
            mostly(
                proptest::collection::vec(user_entry(), 0..4)
                    .prop_map(|v| render_array(&v))
                    .boxed(),
            ),
        ),
        (
            "left",
            mostly(
                proptest::collection::vec(user_entry(), 0..4)
                    .prop_map(|v| render_array(&v))
                    .boxed(),
            ),
        ),
        ("_size", number()),
    ])
}

/// `{"what":"tally",…}` of a vote.
pub fn tally_payload() -> BoxedStrategy<String> {
    let ballot = object(vec![
        ("vote", mostly(string())),
        ("viewId", mostly(string())),
    ])
    .prop_map(|b| serde_json::to_string(&b).unwrap_or_default());
    let tally = proptest::collection::vec((ballot, mostly(number())), 0..4).prop_map(|pairs| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    });
    object(vec![
        ("what", mostly(Just("\"tally\"".to_owned()).boxed())),
        ("sendTime", mostly(number())),
        ("tally", mostly(tally.boxed())),
        ("tallyTarget", value()),
        ("tuttiKey", mostly(string())),
        ("missingClients", mostly(number())),
    ])
}

/// A message array `[time, seq, payload, …rest]`.
pub fn stream_message() -> BoxedStrategy<String> {
    array(vec![
        number(),
        number(),
        prop_oneof![2 => string(), 1 => users_payload(), 1 => tally_payload(), 1 => value()]
            .boxed(),
        number(),
        mostly(string()),
    ])
}

pub fn sync_args() -> BoxedStrategy<String> {
    object(vec![
        ("url", mostly(string())),
        (
            "messages",
            mostly(
                proptest::collection::vec(stream_message(), 0..6)
                    .prop_map(|v| render_array(&v))
                    .boxed(),
            ),
        ),
        ("time", mostly(number())),
        ("seq", mostly(number())),
        ("tove", mostly(string())),
        ("reflector", string()),
        ("timeline", mostly(string())),
        ("flags", value()),
        ("snapshotTime", mostly(number())),
        ("snapshotSeq", mostly(number())),
        ("persisted", leaf()),
    ])
}

/// Any frame a reflector (or something in its place) might send.
pub fn server_frame() -> BoxedStrategy<String> {
    let names: &'static [&'static str] = &["SYNC", "RECV", "TICK", "REQU", "INFO", "PONG"];
    prop_oneof![
        1 => garbage(),
        1 => deep(),
        1 => value(),
        2 => envelope(action_lit(&["SYNC"]), mostly(sync_args()), value()),
        3 => envelope(action_lit(&["RECV"]), mostly(stream_message()), value()),
        1 => envelope(
            action_lit(&["TICK"]),
            mostly(prop_oneof![number(), object(vec![("time", number())])].boxed()),
            value()
        ),
        1 => envelope(
            action_lit(&["INFO"]),
            mostly(object(vec![
                ("code", mostly(string())),
                ("msg", mostly(string())),
                ("options", value()),
            ])),
            value()
        ),
        1 => envelope(action_lit(names), value(), value()),
    ]
    .boxed()
}
