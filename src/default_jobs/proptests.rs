//! Properties of reading default-job files over arbitrary text: any file
//! is parsed and validated (or refused) without a panic, and quickly.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::parse::parse;
use crate::handlers::{BuiltinConfig, HandlerRegistry};
use crate::job_spec::ValidationContext;

/// Text made of YAML's punctuation and a few words, which reaches the
/// parser's corners (flow and block collections, anchors, tags, quotes,
/// block scalars, merge keys) far more often than random characters do.
fn yaml_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("["),
        Just("]"),
        Just("{"),
        Just("}"),
        Just(": "),
        Just(", "),
        Just("- "),
        Just("? "),
        Just("&a "),
        Just("*a"),
        Just("!!str "),
        Just("!x "),
        Just("| "),
        Just("> "),
        Just("'"),
        Just("\""),
        Just("# "),
        Just("%YAML 1.2"),
        Just("---"),
        Just("..."),
        Just("<<: "),
        Just("\n"),
        Just("\n  "),
        Just("\t"),
        Just("\\u0000"),
        Just("job_id"),
        Just("handler"),
        Just("log"),
        Just("http"),
        Just("kwargs"),
        Just("message"),
        Just("periodically"),
        Just("cron"),
        Just("1 day"),
        Just("~"),
        Just(".nan"),
        Just("0x1F"),
        Just("1e400"),
        Just("é"),
        Just("x"),
    ];
    prop_oneof![
        proptest::collection::vec(piece.clone(), 0..80).prop_map(|p| p.concat()),
        any::<String>(),
        proptest::collection::vec(piece, 0..40)
            .prop_map(|p| format!("job_id: a\nhandler: log\nmessage: x\n{}", p.concat())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_file_is_read_without_a_panic(text in yaml_like()) {
        let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        let started = Instant::now();
        let parsed = parse(&text);
        if let Some(spec) = parsed.spec {
            let _ = spec.validate(&ValidationContext {
                registry: &registry,
                now: chrono::Utc::now(),
                source: "/tmp/x.yaml".into(),
            });
        }
        prop_assert!(started.elapsed() < Duration::from_secs(2), "{text:?}");
    }
}
