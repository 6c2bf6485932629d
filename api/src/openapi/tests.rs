use std::collections::BTreeSet;

use super::api_document;
use crate::routes::{Location, table};

#[test]
fn every_route_of_the_table_is_documented_once_and_nothing_else() {
    let document = api_document();
    let paths = document["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let routes = table();
    let listed: BTreeSet<(String, String)> = routes
        .iter()
        .map(|route| (route.method.to_string(), route.path.to_owned()))
        .collect();
    assert_eq!(listed.len(), routes.len(), "a route is listed twice");
    assert_eq!(documented, listed);
}

#[test]
fn path_parameters_match_the_placeholders_and_operation_ids_are_unique() {
    let mut ids = BTreeSet::new();
    for route in table() {
        assert!(
            ids.insert(route.operation_id),
            "{} twice",
            route.operation_id
        );
        let placeholders: BTreeSet<&str> = route
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: BTreeSet<&str> = route
            .params
            .iter()
            .filter(|param| param.location == Location::Path)
            .map(|param| param.name)
            .collect();
        assert_eq!(placeholders, declared, "{} {}", route.method, route.path);
        assert!(!route.summary.is_empty(), "{} has no summary", route.path);
    }
}

#[test]
fn every_schema_reference_resolves() {
    let document = api_document();
    let text = serde_json::to_string(document).expect("serialises");
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().expect("a reference");
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("reference {target} outside the components"));
        assert!(schemas.contains_key(name), "{name} is not defined");
    }
    // The lease token is never shown.
    let lease = &schemas["Lease"]["properties"];
    assert!(lease.get("token").is_none(), "{lease}");
    assert!(lease.get("attempt").is_some());
}

#[test]
fn every_route_says_who_may_call_it_and_only_health_login_and_this_document_are_public() {
    let mut public = BTreeSet::new();
    for route in table() {
        match route.access {
            None => panic!("{} {} has no access rule", route.method, route.path),
            Some(crate::auth::Access::Public) => {
                public.insert(route.path);
            }
            Some(crate::auth::Access::Requires(_)) => {}
        }
    }
    assert_eq!(
        public,
        BTreeSet::from(["/healthz", "/api/v1/openapi.json", "/api/v1/login"])
    );
}
