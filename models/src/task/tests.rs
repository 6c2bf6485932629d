use expect_test::expect;

use super::*;

/// Renders the whole transition table: one row per current status, `yes` where allowed.
fn transition_table() -> String {
    let mut out = String::from("from \\ to");
    for to in TaskStatus::ALL {
        out.push_str(&format!(" {:>8}", to.as_str()));
    }
    out.push('\n');
    for from in TaskStatus::ALL {
        out.push_str(&format!("{:<9}", from.as_str()));
        for to in TaskStatus::ALL {
            let cell = if from.can_become(*to) { "yes" } else { "-" };
            out.push_str(&format!(" {cell:>8}"));
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_allowed_and_refused_transition() {
    expect![[r#"
        from \ to  WAITING     TODO    DOING     DONE   FAILED CANCELED
        WAITING          -      yes        -        -      yes      yes
        TODO             -        -      yes        -      yes      yes
        DOING            -      yes        -      yes      yes      yes
        DONE             -        -        -        -        -        -
        FAILED           -        -        -        -        -        -
        CANCELED         -        -        -        -        -        -
    "#]]
    .assert_eq(&transition_table());
}

#[test]
fn refused_transitions_say_from_and_to() {
    let error = TaskStatus::Done
        .transition(TaskStatus::Canceled)
        .unwrap_err();
    assert_eq!(error.to_string(), "a task cannot go from DONE to CANCELED");
    assert_eq!(
        TaskStatus::Doing.transition(TaskStatus::Doing),
        Err(TransitionError {
            from: TaskStatus::Doing,
            to: TaskStatus::Doing
        })
    );
    assert_eq!(
        TaskStatus::Todo.transition(TaskStatus::Doing),
        Ok(TaskStatus::Doing)
    );
}

#[test]
fn terminal_statuses_are_done_failed_canceled() {
    let terminal: Vec<_> = TaskStatus::ALL.iter().filter(|s| s.is_terminal()).collect();
    assert_eq!(
        terminal,
        [
            &TaskStatus::Done,
            &TaskStatus::Failed,
            &TaskStatus::Canceled
        ]
    );
}

#[test]
fn initial_status_follows_substras_table() {
    use FunctionStatus as F;
    use TaskStatus::*;
    let cases: &[(F, &[TaskStatus], TaskStatus, Option<WaitingReason>)] = &[
        (F::Waiting, &[], Waiting, Some(WaitingReason::Build)),
        (F::Building, &[], Waiting, Some(WaitingReason::Build)),
        (F::Ready, &[], Todo, None),
        (
            F::Waiting,
            &[Done, Waiting],
            Waiting,
            Some(WaitingReason::Build),
        ),
        (
            F::Building,
            &[Done, Waiting],
            Waiting,
            Some(WaitingReason::Build),
        ),
        (
            F::Ready,
            &[Done, Waiting],
            Waiting,
            Some(WaitingReason::Parents),
        ),
        (
            F::Ready,
            &[Done, Doing],
            Waiting,
            Some(WaitingReason::Parents),
        ),
        (
            F::Waiting,
            &[Done, Done],
            Waiting,
            Some(WaitingReason::Build),
        ),
        (
            F::Building,
            &[Done, Done],
            Waiting,
            Some(WaitingReason::Build),
        ),
        (F::Ready, &[Done, Done], Todo, None),
        (F::Ready, &[Failed], Canceled, None),
        (F::Ready, &[Canceled], Canceled, None),
        (F::Ready, &[Canceled, Failed], Canceled, None),
        (F::Waiting, &[Done, Failed], Canceled, None),
        (F::Failed, &[], Failed, None),
        (F::Canceled, &[], Canceled, None),
    ];
    for (function, parents, status, waiting_reason) in cases {
        assert_eq!(
            initial_status(*function, parents.iter().copied()),
            InitialStatus {
                status: *status,
                waiting_reason: *waiting_reason
            },
            "function {function}, parents {parents:?}"
        );
    }
}

#[test]
fn aliases_from_orchestra_and_qunicorn() {
    assert_eq!(
        TaskStatus::from_alias("pending"),
        Some(&[TaskStatus::Waiting, TaskStatus::Todo][..])
    );
    assert_eq!(
        TaskStatus::from_alias("running"),
        Some(&[TaskStatus::Doing][..])
    );
    assert_eq!(
        TaskStatus::from_alias("FINISHED"),
        Some(&[TaskStatus::Done][..])
    );
    assert_eq!(
        TaskStatus::from_alias("succeeded"),
        Some(&[TaskStatus::Done][..])
    );
    assert_eq!(
        TaskStatus::from_alias("exception"),
        Some(&[TaskStatus::Failed][..])
    );
    assert_eq!(
        TaskStatus::from_alias("ERROR"),
        Some(&[TaskStatus::Failed][..])
    );
    assert_eq!(
        TaskStatus::from_alias("aborted"),
        Some(&[TaskStatus::Canceled][..])
    );
    assert_eq!(
        TaskStatus::from_alias("cancelled"),
        Some(&[TaskStatus::Canceled][..])
    );
    assert_eq!(
        TaskStatus::from_alias("done"),
        Some(&[TaskStatus::Done][..])
    );
    assert_eq!(TaskStatus::from_alias("sleeping"), None);
}

#[test]
fn statuses_parse_only_their_canonical_words() {
    assert_eq!("DOING".parse::<TaskStatus>(), Ok(TaskStatus::Doing));
    let error = "running".parse::<TaskStatus>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown task status \"running\", expected one of: WAITING, TODO, DOING, DONE, FAILED, CANCELED"
    );
    let json: TaskStatus = serde_json::from_str("\"CANCELED\"").unwrap();
    assert_eq!(json, TaskStatus::Canceled);
    assert!(serde_json::from_str::<TaskStatus>("\"LOST\"").is_err());
}

#[test]
fn input_ref_needs_exactly_one_source() {
    let asset: TaskInput = serde_json::from_value(serde_json::json!({
        "identifier": "model",
        "asset_key": "0190b1f8-0000-7000-8000-000000000001",
    }))
    .unwrap();
    assert!(matches!(asset.source, InputRef::Asset { .. }));

    let parent: TaskInput = serde_json::from_value(serde_json::json!({
        "identifier": "model",
        "parent_task_key": "0190b1f8-0000-7000-8000-000000000002",
        "parent_task_output_identifier": "model",
    }))
    .unwrap();
    assert!(matches!(parent.source, InputRef::ParentOutput { .. }));
    assert_eq!(
        serde_json::to_value(&parent).unwrap(),
        serde_json::json!({
            "identifier": "model",
            "parent_task_key": "0190b1f8-0000-7000-8000-000000000002",
            "parent_task_output_identifier": "model",
        })
    );

    for bad in [
        serde_json::json!({"identifier": "m"}),
        serde_json::json!({"identifier": "m", "parent_task_key": "0190b1f8-0000-7000-8000-000000000002"}),
        serde_json::json!({
            "identifier": "m",
            "asset_key": "0190b1f8-0000-7000-8000-000000000001",
            "parent_task_key": "0190b1f8-0000-7000-8000-000000000002",
            "parent_task_output_identifier": "model",
        }),
    ] {
        let error = serde_json::from_value::<TaskInput>(bad).unwrap_err();
        assert!(error.to_string().contains("exactly one of"), "{error}");
    }
}

#[test]
fn parent_keys_are_distinct_in_first_occurrence_order() {
    let a = TaskKey(Uuid::from_u128(1));
    let b = TaskKey(Uuid::from_u128(2));
    let input = |key: TaskKey| TaskInput {
        identifier: "models".into(),
        source: InputRef::ParentOutput {
            parent_task_key: key,
            parent_task_output_identifier: "model".into(),
        },
    };
    let inputs = vec![
        input(b),
        TaskInput {
            identifier: "opener".into(),
            source: InputRef::Asset {
                asset_key: Uuid::from_u128(9),
            },
        },
        input(a),
        input(b),
    ];
    assert_eq!(parent_keys(&inputs), vec![b, a]);
}
