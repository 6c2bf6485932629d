//! The OpenAPI 3.1 document, built from the route table with the schemas schemars derives from
//! the Rust types (OpenAPI 3.1's schemas are JSON Schema 2020-12, which schemars writes).

use std::sync::OnceLock;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::auth::Access;
use crate::error::{ErrorBody, ErrorKind};
use crate::routes::{Body, Location, Route, schema_of};

/// The error responses a route may give besides its success.
fn error_kinds(route: &Route) -> Vec<ErrorKind> {
    let mut kinds = vec![ErrorKind::InvalidRequest];
    if route.params.iter().any(|p| p.location == Location::Path) {
        kinds.push(ErrorKind::NotFound);
    }
    if route.request.is_some() {
        kinds.extend([
            ErrorKind::UnsupportedMediaType,
            ErrorKind::PayloadTooLarge,
            ErrorKind::InvalidSubmission,
            ErrorKind::Forbidden,
            ErrorKind::Conflict,
            ErrorKind::Timeout,
        ]);
    }
    if let Some(Access::Requires(_)) = route.access {
        kinds.extend([ErrorKind::Unauthenticated, ErrorKind::Forbidden]);
    }
    kinds.extend([ErrorKind::Unavailable, ErrorKind::Internal]);
    kinds.dedup();
    kinds
}

fn operation(route: &Route, generator: &mut SchemaGenerator) -> Value {
    let parameters: Vec<Value> = route
        .params
        .iter()
        .map(|param| {
            json!({
                "name": param.name,
                "in": param.location.as_str(),
                "description": param.description,
                "required": param.required,
                "schema": (param.schema)(generator),
            })
        })
        .collect();
    let (status, description, body) = route.response;
    let content = match body {
        Body::Json(schema) => json!({"application/json": {"schema": schema(generator)}}),
        Body::Text(media_type) => json!({media_type: {"schema": {"type": "string"}}}),
        Body::Binary => json!({
            "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
        }),
    };
    let mut responses = Map::new();
    responses.insert(
        status.to_string(),
        json!({"description": description, "content": content}),
    );
    let error = schema_of::<ErrorBody>(generator);
    for kind in error_kinds(route) {
        let status = kind.status().as_u16().to_string();
        let entry = responses.entry(status).or_insert_with(|| {
            json!({
                "description": "",
                "content": {"application/json": {"schema": error.clone()}},
            })
        });
        // Several kinds share a status (409): list them all.
        if let Some(Value::String(text)) = entry.get_mut("description") {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(kind.as_str());
        }
    }
    let mut operation = json!({
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": parameters,
        "responses": responses,
    });
    match route.access {
        Some(Access::Requires(action)) => {
            operation["security"] = json!([{"bearer": []}]);
            operation["x-baton-action"] = json!(action.as_str());
        }
        Some(Access::Public) | None => operation["security"] = json!([]),
    }
    if let Some((schema, required)) = route.request {
        operation["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {"schema": schema(generator)}},
        });
    }
    operation
}

/// The OpenAPI document of `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    for route in routes {
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.method.as_str().to_ascii_lowercase()] = operation(route, &mut generator);
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "baton",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "baton's HTTP API: compute plans, tasks and everything they use and \
                produce. Errors are `{\"error\": kind, \"details\": [{path, message}]}`; lists \
                are paginated with `page` and `page_size`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A baton token (`baton_…`), from `POST /api/v1/login`, \
                        `baton tokens create` or `baton migrate --admin`; each operation's \
                        `x-baton-action` is the action the caller's roles must allow \
                        (docs/security.md).",
                },
            },
        },
    })
}

/// The document of the API's route table, built once.
pub fn api_document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| document(&crate::routes::table()))
}

#[cfg(test)]
mod tests;
