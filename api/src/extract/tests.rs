use expect_test::expect;
use serde::Deserialize;

use super::{Query, check_idempotency_key, parse_json, parse_key};
use crate::routes::Param;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read through Debug
struct Body {
    name: String,
    tasks: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read through Debug
struct Item {
    key: uuid::Uuid,
}

fn error_json(error: crate::ApiError) -> String {
    serde_json::to_string(&error.body()).expect("serialises")
}

#[test]
fn a_bad_field_is_reported_with_its_path() {
    let error = parse_json::<Body>(br#"{"name": "p", "tasks": [{"key": "not-a-uuid"}]}"#)
        .expect_err("invalid");
    expect![[r#"{"error":"invalid_request","details":[{"path":"tasks[0].key","message":"UUID parsing failed: invalid character: found `n` at 0 at line 1 column 44"}]}"#]]
        .assert_eq(&error_json(error));
}

#[test]
fn malformed_json_and_unknown_fields_are_reported() {
    let error = parse_json::<Body>(b"{\"name\": ").expect_err("truncated");
    expect![[r#"{"error":"invalid_request","details":[{"path":"name","message":"EOF while parsing a value at line 1 column 9"}]}"#]]
        .assert_eq(&error_json(error));
    let error = parse_json::<Body>(br#"{"name": "p", "tasks": [], "extra": 1}"#)
        .expect_err("unknown field");
    assert!(error_json(error).contains("unknown field `extra`"));
    let error = parse_json::<Body>(br#"{"name": "p", "tasks": []} trailing"#)
        .expect_err("trailing characters");
    assert!(error_json(error).contains("trailing characters"));
    assert!(parse_json::<Body>(br#"{"name": "p", "tasks": []}"#).is_ok());
}

#[test]
fn a_bad_path_key_names_the_parameter() {
    let error = parse_key::<uuid::Uuid>("key", "42").expect_err("not a UUID");
    assert!(
        error_json(error).starts_with(r#"{"error":"invalid_request","details":[{"path":"key","#)
    );
    assert_eq!(
        parse_key::<uuid::Uuid>("key", "01900000-0000-7000-8000-000000000001").ok(),
        Some(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0001
        ))
    );
}

const KNOWN: &[Param] = &[
    Param::query::<u32>("page", ""),
    Param::query::<String>("status", ""),
];

#[test]
fn queries_take_only_declared_parameters_once() {
    let query = Query::from_query_string(Some("status=DONE&page=2"));
    assert!(query.only(KNOWN).is_ok());
    assert_eq!(query.get("status"), Some("DONE"));
    assert_eq!(query.parse::<u32>("page").ok(), Some(Some(2)));
    assert_eq!(query.parse::<u32>("page_size").ok(), Some(None));

    let error = Query::from_query_string(Some("stauts=DONE&page=1&page=2"))
        .only(KNOWN)
        .expect_err("a typo and a repeat");
    expect![[r#"{"error":"invalid_request","details":[{"path":"stauts","message":"unknown parameter, expected one of: page, status"},{"path":"page","message":"given more than once"}]}"#]]
        .assert_eq(&error_json(error));
    let error = Query::from_query_string(Some("x=1"))
        .only(&[])
        .expect_err("no parameter");
    assert!(error_json(error).contains("this route takes no query parameter"));
}

#[test]
fn query_values_are_percent_decoded_and_parse_errors_name_the_parameter() {
    let query = Query::from_query_string(Some("tag=%F0%9F%8F%B7+nightly&page=two"));
    assert_eq!(query.get("tag"), Some("🏷 nightly"));
    let error = query.parse::<u32>("page").expect_err("not a number");
    expect![[r#"{"error":"invalid_request","details":[{"path":"page","message":"\"two\": invalid digit found in string"}]}"#]]
        .assert_eq(&error_json(error));
}

#[test]
fn idempotency_keys_are_bounded_visible_ascii() {
    assert_eq!(
        check_idempotency_key(b"retry-7f3a").ok(),
        Some("retry-7f3a".to_owned())
    );
    assert!(check_idempotency_key(b"").is_err());
    assert!(check_idempotency_key(b"with space").is_err());
    assert!(check_idempotency_key("clé".as_bytes()).is_err());
    assert!(check_idempotency_key(&[b'a'; 201]).is_err());
    assert!(check_idempotency_key(&[b'a'; 200]).is_ok());
}
