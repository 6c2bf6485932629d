use super::*;

#[test]
fn every_kind_is_unique_and_dotted() {
    let schemas = schemas();
    let mut kinds: Vec<&str> = schemas.iter().map(|s| s.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), schemas.len(), "duplicate kind");
    for kind in kinds {
        assert!(
            kind.split('.').count() == 2
                && kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
            "{kind} is not `noun.verb`"
        );
    }
}

#[test]
fn replies_are_tagged_by_outcome_and_decision() {
    let reply = SubmissionReply::Rejected {
        compute_plan_key: None,
        error: "invalid_submission".into(),
        details: vec![ErrorDetail {
            path: "name".into(),
            message: "must not be empty".into(),
        }],
    };
    assert_eq!(
        serde_json::to_value(&reply).unwrap(),
        serde_json::json!({
            "outcome": "rejected",
            "compute_plan_key": null,
            "error": "invalid_submission",
            "details": [{"path": "name", "message": "must not be empty"}],
        })
    );
    let refused = ClaimReply::Refused {
        task_key: TaskKey(Uuid::from_u128(7)),
        reason: "task is DONE".into(),
    };
    let value = serde_json::to_value(&refused).unwrap();
    assert_eq!(value["decision"], "refused");
    assert_eq!(
        serde_json::from_value::<ClaimReply>(value).unwrap(),
        refused
    );
}

#[test]
fn the_task_input_schema_says_asset_or_parent() {
    let schema = serde_json::to_string(&schemars::schema_for!(crate::TaskInput)).unwrap();
    for field in [
        "asset_key",
        "parent_task_key",
        "parent_task_output_identifier",
        "identifier",
    ] {
        assert!(schema.contains(field), "{field} missing from {schema}");
    }
}

#[test]
fn the_task_input_schema_accepts_exactly_one_source() {
    let schema = schemars::schema_for!(crate::TaskInput).to_value();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let asset = serde_json::json!({"identifier": "m", "asset_key": Uuid::from_u128(1)});
    let parent = serde_json::json!({
        "identifier": "m",
        "parent_task_key": Uuid::from_u128(2),
        "parent_task_output_identifier": "model",
    });
    let both = serde_json::json!({
        "identifier": "m",
        "asset_key": Uuid::from_u128(1),
        "parent_task_key": Uuid::from_u128(2),
        "parent_task_output_identifier": "model",
    });
    let neither = serde_json::json!({"identifier": "m"});
    let half = serde_json::json!({"identifier": "m", "parent_task_key": Uuid::from_u128(2)});
    assert!(validator.is_valid(&asset));
    assert!(validator.is_valid(&parent));
    for bad in [both, neither, half] {
        assert!(!validator.is_valid(&bad), "{bad} should be refused");
        // The schema and the decoder agree.
        assert!(serde_json::from_value::<crate::TaskInput>(bad).is_err());
    }
}

#[test]
fn a_status_report_reads_flat() {
    let report = TaskStatusReport {
        task_key: TaskKey(Uuid::from_u128(1)),
        attempt: Attempt(2),
        lease_token: Uuid::from_u128(3),
        worker_id: "w".into(),
        outcome: ReportedOutcome::Failed {
            error_type: TaskErrorType::Timeout,
            message: "step train ran out of time".into(),
            retryable: true,
        },
        steps: Vec::new(),
        output: serde_json::Value::Null,
        outputs: Vec::new(),
        logs: Vec::new(),
        follow_up: false,
        idle_slots: 0,
        started_next: None,
        awaits_work: false,
        on_deck: 0,
    };
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["outcome"], "failed");
    assert_eq!(value["error_type"], "TIMEOUT");
    assert_eq!(
        serde_json::from_value::<TaskStatusReport>(value).unwrap(),
        report
    );
    let done: TaskStatusReport = serde_json::from_value(serde_json::json!({
        "task_key": Uuid::from_u128(1),
        "attempt": 1,
        "lease_token": Uuid::from_u128(3),
        "worker_id": "w",
        "outcome": "done",
    }))
    .unwrap();
    assert_eq!(done.outcome, ReportedOutcome::Done);
}

#[test]
fn reported_outputs_are_checked_against_the_declaration() {
    use crate::{File, FunctionOutput, OutputKind};
    let declared = vec![
        FunctionOutput {
            identifier: "model".into(),
            kind: OutputKind::Model,
            multiple: false,
        },
        FunctionOutput {
            identifier: "shards".into(),
            kind: OutputKind::Model,
            multiple: true,
        },
        FunctionOutput {
            identifier: "auc".into(),
            kind: OutputKind::Performance,
            multiple: false,
        },
    ];
    let file = File {
        checksum: "0".repeat(64),
        storage_address: "a/b".into(),
    };
    let model = |identifier: &str| ReportedOutput::Model {
        identifier: identifier.into(),
        file: file.clone(),
    };
    let perf = |identifier: &str, value: f64| ReportedOutput::Performance {
        identifier: identifier.into(),
        value,
    };
    let good = vec![
        model("model"),
        model("shards"),
        model("shards"),
        perf("auc", 0.5),
    ];
    assert!(check_reported_outputs(&declared, &good).is_empty());
    let bad = vec![
        model("model"),
        model("model"),
        perf("shards", 1.0),
        perf("auc", f64::NAN),
        model("extra"),
    ];
    expect_test::expect![[r#"
        [
            "output `shards` takes a MODEL",
            "output `auc`: NaN is not a finite number",
            "output `extra` is not declared by the function",
            "output `model` takes one value, got 2",
        ]
    "#]]
    .assert_debug_eq(&check_reported_outputs(&declared, &bad));
    expect_test::expect![[r#"
        [
            "output `model` has no value",
            "output `shards` has no value",
            "output `auc` has no value",
        ]
    "#]]
    .assert_debug_eq(&check_reported_outputs(&declared, &[]));
}
