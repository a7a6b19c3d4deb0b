use serde_json::json;

use super::*;

fn http_rules() -> Vec<SecretField> {
    vec![
        SecretField::values_named("headers", &["authorization", "cookie", "x-api-key"]),
        SecretField::every_value("secret_headers"),
    ]
}

#[test]
fn redact_masks_named_headers_whatever_their_case_and_every_secret_header() {
    let kwargs = json!({
        "url": "http://x/",
        "headers": {"Authorization": "Bearer abc", "COOKIE": "s=1", "X-Api-Key": "k", "Accept": "text/plain"},
        "secret_headers": {"X-Token": "t0ken", "X-Other": "o"},
    });
    let shown = redact(&kwargs, &http_rules());
    assert_eq!(
        shown,
        json!({
            "url": "http://x/",
            "headers": {"Authorization": "***", "COOKIE": "***", "X-Api-Key": "***", "Accept": "text/plain"},
            "secret_headers": {"X-Token": "***", "X-Other": "***"},
        })
    );
    assert!(has_secrets(&kwargs, &http_rules()));
    assert!(!has_secrets(&json!({"url": "http://x/"}), &http_rules()));
}

#[test]
fn redact_masks_a_whole_field_and_any_value_type_but_not_nulls() {
    let rules = [
        SecretField::value("password"),
        SecretField::every_value("env"),
    ];
    let shown = redact(
        &json!({"password": 1234, "env": {"A": null, "B": ["x"]}, "user": "me"}),
        &rules,
    );
    assert_eq!(
        shown,
        json!({"password": "***", "env": {"A": null, "B": "***"}, "user": "me"})
    );
    // Not an object, or fields of the wrong type: left as they are.
    assert_eq!(redact(&json!([1]), &rules), json!([1]));
    assert_eq!(redact(&json!({"env": "x"}), &rules), json!({"env": "x"}));
}

#[test]
fn no_rules_change_nothing() {
    let kwargs = json!({"headers": {"Authorization": "x"}});
    assert_eq!(redact(&kwargs, &[]), kwargs);
    assert!(secret_values(&kwargs, &[]).is_empty());
}

#[test]
fn keep_stored_takes_the_stored_secret_for_a_mask_only() {
    let stored = json!({
        "url": "http://old/",
        "headers": {"authorization": "Bearer old-secret", "Accept": "a"},
        "secret_headers": {"X-Token": "token-1", "X-Gone": "gone"},
    });
    let patch = json!({
        "url": "http://new/",
        "headers": {"Authorization": "***", "Accept": "b"},
        "secret_headers": {"X-Token": "***", "X-New": "fresh"},
    });
    let kept = keep_stored(&patch, Some(&stored), &http_rules()).unwrap();
    assert_eq!(
        kept,
        json!({
            "url": "http://new/",
            // The name as sent, the value as stored (header names ignore case).
            "headers": {"Authorization": "Bearer old-secret", "Accept": "b"},
            "secret_headers": {"X-Token": "token-1", "X-New": "fresh"},
        })
    );
}

#[test]
fn keep_stored_refuses_a_mask_for_a_secret_that_did_not_exist() {
    let stored = json!({"headers": {"Authorization": "Bearer x"}});
    let patch = json!({
        "headers": {"Authorization": "***", "Cookie": "***"},
        "secret_headers": {"X-New": "***"},
    });
    let problems = keep_stored(&patch, Some(&stored), &http_rules()).unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        ["kwargs/headers/Cookie", "kwargs/secret_headers/X-New"]
    );
    assert!(
        problems[0].1.contains("send the value itself"),
        "{problems:?}"
    );
    // A new job has nothing stored.
    let problems = keep_stored(
        &json!({"env": {"A": "***"}}),
        None,
        &[SecretField::every_value("env")],
    )
    .unwrap_err();
    assert_eq!(problems[0].0, "kwargs/env/A");
}

#[test]
fn keep_stored_leaves_masks_outside_secret_fields_alone() {
    let patch = json!({"headers": {"Accept": "***"}, "body": "***"});
    assert_eq!(keep_stored(&patch, None, &http_rules()).unwrap(), patch);
}

#[test]
fn secret_values_are_long_enough_longest_first_and_unique() {
    let kwargs = json!({
        "env": {"A": "abc", "B": "abcd", "C": "abcdefgh", "D": "abcd", "E": 123456, "F": "***"},
    });
    assert_eq!(
        secret_values(&kwargs, &[SecretField::every_value("env")]),
        ["abcdefgh", "123456", "abcd"]
    );
    // A value of the wrong type: as JSON, and the texts inside it.
    assert_eq!(
        secret_values(
            &json!({"env": {"A": ["inner-secret", 7]}}),
            &[SecretField::every_value("env")]
        ),
        ["[\"inner-secret\",7]", "inner-secret"]
    );
}

#[test]
fn scrub_text_masks_every_occurrence_and_escaped_forms() {
    let secrets = vec!["s3cr\"et".to_string(), "token".to_string()];
    assert_eq!(
        scrub_text("got token and token; raw s3cr\"et", &secrets),
        "got *** and ***; raw ***"
    );
    // `{:?}` and JSON escape the quote.
    assert_eq!(
        scrub_text(r#"value "s3cr\"et""#, &secrets),
        r#"value "***""#
    );
    // A secret holding another is masked whole.
    let nested = vec!["Bearer abcdef".to_string(), "abcdef".to_string()];
    assert_eq!(
        scrub_text("auth: Bearer abcdef, key abcdef", &nested),
        "auth: ***, key ***"
    );
    // Short secrets are not searched for.
    assert_eq!(scrub_text("a 12 b", &["12".to_string()]), "a 12 b");
    assert_eq!(scrub_text("nothing here", &[]), "nothing here");
}

#[test]
fn scrub_value_masks_strings_and_keys_at_any_depth() {
    let mut value =
        json!({"stdout": "hunter22\n", "nested": [{"hunter22": 1, "n": 5}], "ok": true});
    scrub_value(&mut value, &["hunter22".to_string()]);
    assert_eq!(
        value,
        json!({"stdout": "***\n", "nested": [{"***": 1, "n": 5}], "ok": true})
    );
}

#[test]
fn failure_records_show_the_failed_kwargs_redacted_and_scrubbed_texts() {
    let record = json!({
        "exc_str": "program \"sh\" exited with code 1; stderr: leaked hunter22",
        "exc_traceback": "hunter22 again",
        "failed_job_id": "j",
        "failed_job_handler": "command",
        "failed_handler_kwargs": {"program": "sh", "env": {"SECRET": "hunter22"}},
        "failed_run_id": "r",
    });
    let rules = [SecretField::every_value("env")];
    let shown = redact_failure_record(&record, &rules);
    assert_eq!(shown["failed_handler_kwargs"]["env"]["SECRET"], "***");
    assert_eq!(
        shown["exc_str"],
        "program \"sh\" exited with code 1; stderr: leaked ***"
    );
    assert_eq!(shown["exc_traceback"], "*** again");
    assert_eq!(shown["failed_job_id"], "j");
    assert_eq!(failure_record_secrets(&record, &rules), ["hunter22"]);
    // A record without failed kwargs is shown as it is.
    assert_eq!(
        redact_failure_record(&json!({"a": 1}), &rules),
        json!({"a": 1})
    );
}
