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
