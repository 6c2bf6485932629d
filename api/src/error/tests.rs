use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use expect_test::expect;

use broker::BrokerError;
use dispatcher::store::StoreError;
use models::wire::ErrorDetail;

use super::{ApiError, ErrorKind};

fn detail(path: &str, message: &str) -> ErrorDetail {
    ErrorDetail {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

fn json(error: &ApiError) -> String {
    serde_json::to_string(&error.body()).expect("an error body serialises")
}

#[test]
fn the_body_has_the_kind_and_every_detail() {
    let error = ApiError::with_details(
        ErrorKind::InvalidRequest,
        vec![detail("page", "not a number"), detail("status", "unknown")],
    );
    expect![[r#"{"error":"invalid_request","details":[{"path":"page","message":"not a number"},{"path":"status","message":"unknown"}]}"#]]
        .assert_eq(&json(&error));
    assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST);
}

#[test]
fn dispatcher_refusals_map_to_statuses_by_their_word() {
    let cases = [
        (
            "invalid_submission",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_submission",
        ),
        (
            "invalid",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_submission",
        ),
        ("already_exists", StatusCode::CONFLICT, "already_exists"),
        ("forbidden", StatusCode::FORBIDDEN, "forbidden"),
        ("not_found", StatusCode::NOT_FOUND, "not_found"),
        ("malformed", StatusCode::BAD_REQUEST, "invalid_request"),
        ("something new", StatusCode::CONFLICT, "refused"),
        ("internal", StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    ];
    for (word, status, kind) in cases {
        let error = ApiError::refusal(word, vec![detail("tasks[0].key", "duplicate")]);
        assert_eq!(
            (error.kind().status(), error.kind().as_str()),
            (status, kind),
            "{word}"
        );
    }
    // The dispatcher's details are kept, path by path.
    let error = ApiError::refusal(
        "invalid",
        vec![detail("tasks[2].inputs[0]", "unknown parent")],
    );
    expect![[r#"{"error":"invalid_submission","details":[{"path":"tasks[2].inputs[0]","message":"unknown parent"}]}"#]]
        .assert_eq(&json(&error));
}

#[test]
fn an_internal_error_hides_its_cause() {
    let error = ApiError::internal("password authentication failed for postgres://baton:secret@db");
    expect![[r#"{"error":"internal","details":[{"path":"","message":"internal error; the server's log has the details"}]}"#]]
        .assert_eq(&json(&error));
}

#[test]
fn store_errors_are_unavailable_or_internal_and_never_quoted() {
    let pool = ApiError::from(StoreError::Pool(
        "connecting to postgres://baton:secret@127.0.0.1/baton".to_owned(),
    ));
    assert_eq!(pool.kind(), ErrorKind::Unavailable);
    assert!(!json(&pool).contains("secret"), "{}", json(&pool));
    let corrupt = ApiError::from(StoreError::Corrupt {
        table: "tasks",
        key: "k".to_owned(),
        reason: "bad".to_owned(),
    });
    assert_eq!(corrupt.kind(), ErrorKind::Internal);
    assert!(!json(&corrupt).contains("bad"));
}

#[test]
fn broker_errors_are_timeouts_or_unavailable_and_never_quoted() {
    let timeout = ApiError::from(BrokerError::ReplyTimeout {
        kind: "plan.submit",
        after: Duration::from_secs(60),
    });
    assert_eq!(timeout.kind().status(), StatusCode::GATEWAY_TIMEOUT);
    expect![[r#"{"error":"timeout","details":[{"path":"","message":"the dispatcher did not answer within 60s; the request may still be applied: retry with the same Idempotency-Key"}]}"#]]
        .assert_eq(&json(&timeout));
    let down = ApiError::from(BrokerError::Url {
        url: "amqp://guest:***@127.0.0.1".to_owned(),
        reason: "bad".to_owned(),
    });
    assert_eq!(down.kind().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!json(&down).contains("amqp"), "{}", json(&down));
}
