use expect_test::{Expect, expect};
use serde_json::json;

use super::*;
use crate::submission::NewFunction;

/// A valid function to start each case from, as JSON so that cases read like submissions.
fn base() -> serde_json::Value {
    json!({
        "key": "0190b1f8-0000-7000-8000-000000000001",
        "name": "train",
        "permissions": {"process": {"public": false, "authorized_ids": []}},
        "inputs": [
            {"identifier": "opener", "kind": "DATA_MANAGER"},
            {"identifier": "datasamples", "kind": "DATA_SAMPLE", "multiple": true},
            {"identifier": "model", "kind": "MODEL", "optional": true},
        ],
        "outputs": [
            {"identifier": "model", "kind": "MODEL"},
            {"identifier": "score", "kind": "PERFORMANCE"},
        ],
        "steps": [{"name": "train", "command": ["python", "train.py", "{parameters.lr}"]}],
        "parameters": [{"key": "lr", "description": "learning rate", "default": 0.1}],
        "parameter_schema": {
            "type": "object",
            "properties": {"lr": {"type": "number", "minimum": 0}},
        },
    })
}

/// Validates `base()` changed by `edit`, and compares the rendered errors with `expect`.
fn check(edit: impl FnOnce(&mut serde_json::Value), expect: Expect) {
    let mut value = base();
    edit(&mut value);
    let function: NewFunction = serde_json::from_value(value).expect("test input decodes");
    let rendered = match validate_function(&function) {
        Ok(()) => "ok\n".to_owned(),
        Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
    };
    expect.assert_eq(&rendered);
}

#[test]
fn a_valid_function_passes() {
    check(
        |_| {},
        expect![[r#"
        ok
    "#]],
    );
}

#[test]
fn two_data_managers_are_refused() {
    check(
        |f| {
            f["inputs"]
                .as_array_mut()
                .unwrap()
                .push(json!({"identifier": "opener2", "kind": "DATA_MANAGER"}))
        },
        expect![[r#"
            inputs[3].kind: at most one DATA_MANAGER input is allowed
        "#]],
    );
}

#[test]
fn a_data_manager_without_samples_is_refused() {
    check(
        |f| {
            f["inputs"].as_array_mut().unwrap().remove(1);
        },
        expect![[r#"
            inputs: a DATA_MANAGER input needs a DATA_SAMPLE input
        "#]],
    );
}

#[test]
fn samples_without_a_data_manager_are_refused() {
    check(
        |f| {
            f["inputs"].as_array_mut().unwrap().remove(0);
        },
        expect![[r#"
            inputs: a DATA_SAMPLE input needs a DATA_MANAGER input
        "#]],
    );
}

#[test]
fn an_optional_or_multiple_data_manager_is_refused() {
    check(
        |f| {
            f["inputs"][0]["optional"] = json!(true);
            f["inputs"][0]["multiple"] = json!(true);
        },
        expect![[r#"
            inputs[0].optional: a DATA_MANAGER input cannot be optional
            inputs[0].multiple: a DATA_MANAGER input cannot be multiple
        "#]],
    );
}

#[test]
fn a_multiple_performance_output_is_refused() {
    check(
        |f| f["outputs"][1]["multiple"] = json!(true),
        expect![[r#"
            outputs[1].multiple: a PERFORMANCE output cannot be multiple
        "#]],
    );
}

#[test]
fn identifiers_of_0_and_101_characters_are_refused() {
    check(
        |f| {
            f["inputs"][2]["identifier"] = json!("");
            f["outputs"][0]["identifier"] = json!("m".repeat(101));
        },
        expect![[r#"
            inputs[2].identifier: must not be empty
            outputs[0].identifier: is 101 characters long, at most 100 allowed
        "#]],
    );
}

#[test]
fn identifiers_of_1_and_100_characters_are_accepted() {
    check(
        |f| {
            f["inputs"][2]["identifier"] = json!("m");
            f["outputs"][0]["identifier"] = json!("m".repeat(100));
        },
        expect![[r#"
            ok
        "#]],
    );
}

#[test]
fn duplicate_identifiers_are_refused() {
    check(
        |f| f["outputs"][1]["identifier"] = json!("model"),
        expect![[r#"
            outputs[1].identifier: duplicate identifier "model"
        "#]],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    check(
        |f| {
            f["name"] = json!("");
            f["metadata"] = json!({"__tag__": "x", "k": "v".repeat(101)});
            f["inputs"].as_array_mut().unwrap().remove(1);
            f["outputs"][1]["multiple"] = json!(true);
            f["steps"][0]["command"] = json!([]);
            f["parameters"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": "bad key"}));
            f["parameters"][0]["default"] = json!(-1);
            f["workspace"] = json!("../elsewhere");
            f["retry"] = json!({"max_attempts": 0, "backoff_initial_ms": 10, "backoff_max_ms": 1, "jitter": true});
            f["timeout_secs"] = json!(0);
            f["archive"] = json!({"checksum": "abc", "storage_address": ""});
        },
        expect![[r#"
            name: must not be empty
            metadata["__tag__"]: metadata keys must not contain "__"
            metadata["k"]: is 101 bytes long, at most 100 allowed
            archive.checksum: checksum must be 64 hex digits (a SHA-256)
            archive.storage_address: must not be empty
            inputs: a DATA_MANAGER input needs a DATA_SAMPLE input
            outputs[1].multiple: a PERFORMANCE output cannot be multiple
            steps[0].command: a command needs at least the program to run
            parameters[0].default: does not match the parameter schema: -1 is less than the minimum of 0
            parameters[1].key: "bad key" is not a valid parameter key: use letters, digits, '_', '-' and '.'
            workspace: "../elsewhere" must be a relative path that stays inside its root
            retry.max_attempts: must be between 1 and 100
            retry: backoff_initial_ms must not exceed backoff_max_ms
            timeout_secs: must be between 1 and 18446744073709551615
        "#]],
    );
}

#[test]
fn an_invalid_parameter_schema_is_refused() {
    check(
        |f| f["parameter_schema"] = json!({"type": "no-such-type"}),
        expect![[r#"
            parameter_schema: is not a valid JSON Schema: "no-such-type" is not valid under any of the schemas listed in the 'anyOf' keyword
        "#]],
    );
}

#[test]
fn deeply_nested_data_is_refused() {
    let mut nested = json!(1);
    for _ in 0..40 {
        nested = json!([nested]);
    }
    check(
        move |f| f["data"] = nested,
        expect![[r#"
            data: is nested deeper than 32 levels
        "#]],
    );
}

#[test]
fn field_paths_display_like_json_paths() {
    let path = FieldPath::root()
        .field("tasks")
        .index(2)
        .field("outputs")
        .key("model");
    assert_eq!(path.to_string(), r#"tasks[2].outputs["model"]"#);
    assert_eq!(FieldPath::root().to_string(), "(root)");
}
