use models::wire::{ClaimRequest, TaskReady};
use models::{FunctionKey, PlanKey, RequirementSet, TaskKey};
use uuid::Uuid;

use super::*;

fn claim() -> ClaimRequest {
    ClaimRequest {
        task_key: TaskKey(Uuid::from_u128(1)),
        worker_id: "worker-1".into(),
    }
}

fn meta() -> Meta {
    Meta {
        message_id: "m-1".into(),
        correlation_id: None,
        reply_to: Some("amq.rabbitmq.reply-to.abc".into()),
        user_id: Some("baton-worker".into()),
        app_id: Some("baton-worker".into()),
        timestamp: Some(1_790_000_000),
        on_behalf_of: Some("alice".into()),
    }
}

#[test]
fn a_message_round_trips_through_its_envelope() {
    let (body, properties) = encode(&claim(), &meta()).unwrap();
    assert_eq!(
        properties.content_type().as_ref().unwrap().as_str(),
        CONTENT_TYPE
    );
    assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
    assert_eq!(properties.kind().as_ref().unwrap().as_str(), "task.claim");
    let envelope = Envelope::open(&properties, &body).unwrap();
    assert_eq!(envelope.kind, "task.claim");
    assert_eq!(envelope.meta, meta());
    assert_eq!(envelope.decode::<ClaimRequest>().unwrap(), claim());
}

#[test]
fn the_body_is_plain_json() {
    let (body, _) = encode(&claim(), &meta()).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"task_key": "00000000-0000-0000-0000-000000000001", "worker_id": "worker-1"})
    );
}

#[test]
fn another_kind_is_refused() {
    let (body, properties) = encode(&claim(), &meta()).unwrap();
    let envelope = Envelope::open(&properties, &body).unwrap();
    let error = envelope.decode::<TaskReady>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "unexpected message type \"task.claim\", expected one of: task.ready"
    );
}

#[test]
fn a_malformed_body_is_refused_with_where() {
    let (_, properties) = encode(&claim(), &meta()).unwrap();
    let envelope = Envelope::open(&properties, b"{\"task_key\": 12}").unwrap();
    let error = envelope.decode::<ClaimRequest>().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("body is not a valid task.claim message: invalid type"),
        "{error}"
    );
    assert!(error.to_string().contains("column"), "{error}");
}

#[test]
fn unknown_schema_versions_and_missing_headers_are_refused() {
    let (body, properties) = encode(&claim(), &meta()).unwrap();
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_VERSION_HEADER.into(), AMQPValue::LongInt(99));
    let future = properties.clone().with_headers(headers);
    assert_eq!(
        Envelope::open(&future, &body).unwrap_err(),
        DecodeError::UnsupportedSchemaVersion { found: 99 }
    );
    let bare = properties.clone().with_headers(FieldTable::default());
    assert_eq!(
        Envelope::open(&bare, &body).unwrap_err(),
        DecodeError::MissingSchemaVersion
    );
    let text = properties.with_content_type("text/plain".into());
    assert_eq!(
        Envelope::open(&text, &body).unwrap_err(),
        DecodeError::ContentType {
            found: Some("text/plain".into())
        }
    );
}

#[test]
fn a_schema_version_sent_as_a_string_or_small_integer_is_read() {
    let (body, properties) = encode(&claim(), &meta()).unwrap();
    for value in [
        AMQPValue::LongString("1".into()),
        AMQPValue::ShortShortUInt(1),
        AMQPValue::LongUInt(1),
    ] {
        let mut headers = FieldTable::default();
        headers.insert(SCHEMA_VERSION_HEADER.into(), value);
        let other = properties.clone().with_headers(headers);
        assert!(Envelope::open(&other, &body).is_ok());
    }
}

#[test]
fn overlong_properties_are_an_error_not_a_panic() {
    let mut meta = meta();
    meta.reply_to = Some("x".repeat(300));
    let error = encode(&claim(), &meta).unwrap_err();
    assert_eq!(
        error.to_string(),
        "reply_to is 300 bytes long, at most 255 fit in an AMQP property"
    );
}

#[test]
fn dead_letter_headers_keep_the_original_ones() {
    let (_, properties) = encode(
        &TaskReady {
            task_key: TaskKey(Uuid::from_u128(1)),
            compute_plan_key: PlanKey(Uuid::from_u128(2)),
            function_key: FunctionKey(Uuid::from_u128(3)),
            requirements: RequirementSet::any(),
            attempt: None,
        },
        &meta(),
    )
    .unwrap();
    let headers = dead_letter_headers(
        properties.headers().as_ref(),
        "no such task",
        "baton.tasks.any",
    );
    let inner = headers.inner();
    assert!(inner.contains_key(SCHEMA_VERSION_HEADER));
    assert_eq!(
        inner.get(DEAD_REASON_HEADER),
        Some(&AMQPValue::LongString("no such task".into()))
    );
    assert_eq!(
        inner.get(DEAD_QUEUE_HEADER),
        Some(&AMQPValue::LongString("baton.tasks.any".into()))
    );
}
