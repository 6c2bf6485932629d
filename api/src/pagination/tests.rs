use expect_test::expect;

use super::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Pagination};
use crate::extract::Query;

fn parse(query: &str) -> Result<Pagination, String> {
    Pagination::from_query(&Query::from_query_string(Some(query)))
        .map_err(|error| serde_json::to_string(&error.body()).expect("serialises"))
}

#[test]
fn defaults_to_the_first_page_of_fifty() {
    assert_eq!(
        parse(""),
        Ok(Pagination {
            page: 1,
            page_size: DEFAULT_PAGE_SIZE
        })
    );
    assert_eq!(Pagination::default().offset(), 0);
}

#[test]
fn offset_is_the_rows_of_the_pages_before() {
    let pagination = parse("page=3&page_size=20").expect("valid");
    assert_eq!((pagination.limit(), pagination.offset()), (20, 40));
    let last = parse(&format!("page=1000000000&page_size={MAX_PAGE_SIZE}")).expect("valid");
    assert_eq!(last.offset(), 999_999_999 * 1000);
}

#[test]
fn out_of_bounds_values_name_their_parameter() {
    expect![[r#"Err("{\"error\":\"invalid_request\",\"details\":[{\"path\":\"page\",\"message\":\"\\\"0\\\" is not an integer from 1 to 1000000000\"}]}")"#]]
        .assert_eq(&format!("{:?}", parse("page=0")));
    expect![[r#"Err("{\"error\":\"invalid_request\",\"details\":[{\"path\":\"page_size\",\"message\":\"\\\"1001\\\" is not an integer from 1 to 1000\"}]}")"#]]
        .assert_eq(&format!("{:?}", parse("page_size=1001")));
    // Both wrong: both reported.
    let both = parse("page=-1&page_size=abc").expect_err("invalid");
    assert!(both.contains("\"path\":\"page\"") && both.contains("\"path\":\"page_size\""));
    assert!(parse("page=1.5").is_err());
    assert!(parse("page=99999999999").is_err());
}

#[test]
fn a_page_reports_the_total_count() {
    let page = parse("page=2&page_size=2")
        .expect("valid")
        .page_of(5, vec!['c', 'd']);
    expect![[r#"{"count":5,"page":2,"page_size":2,"results":["c","d"]}"#]]
        .assert_eq(&serde_json::to_string(&page).expect("serialises"));
}
