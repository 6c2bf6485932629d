//! The route table: every route's method, path, summary, parameters, request and response
//! types, and handler. The router and the OpenAPI document are both built from it, so neither
//! can list a route the other lacks.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};

use models::access::Action;

use crate::auth::Access;
use crate::state::ApiState;

/// Writes the JSON Schema of a type, as a `$ref` to the document's components when it is named.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The [`SchemaFn`] of `T`.
pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// Where a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// In the path: `{key}`.
    Path,
    /// In the query string.
    Query,
    /// A request header.
    Header,
}

impl Location {
    /// OpenAPI's word for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

/// A parameter of a route.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// Where it is.
    pub location: Location,
    /// What it means.
    pub description: &'static str,
    /// Whether it must be given (path parameters always are).
    pub required: bool,
    /// Its values' schema.
    pub schema: SchemaFn,
}

impl Param {
    /// An optional query parameter of type `T`.
    pub const fn query<T: JsonSchema>(name: &'static str, description: &'static str) -> Param {
        Param {
            name,
            location: Location::Query,
            description,
            required: false,
            schema: schema_of::<T>,
        }
    }

    /// A path parameter of type `T`.
    pub const fn path<T: JsonSchema>(name: &'static str, description: &'static str) -> Param {
        Param {
            name,
            location: Location::Path,
            description,
            required: true,
            schema: schema_of::<T>,
        }
    }

    /// An optional header of type `T`.
    pub const fn header<T: JsonSchema>(name: &'static str, description: &'static str) -> Param {
        Param {
            name,
            location: Location::Header,
            description,
            required: false,
            schema: schema_of::<T>,
        }
    }
}

/// The `Idempotency-Key` header every write takes.
pub const IDEMPOTENCY_KEY: Param = Param::header::<String>(
    crate::extract::IDEMPOTENCY_KEY,
    "Makes the write safe to retry: a request with the key of an earlier one gets that \
     request's answer and changes nothing (1 to 200 visible ASCII characters).",
);

/// What a successful response holds.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    /// JSON of the given schema.
    Json(SchemaFn),
    /// Text of the given media type.
    Text(&'static str),
    /// A file's bytes.
    Binary,
}

/// One route.
pub struct Route {
    /// Its method.
    pub method: Method,
    /// Its path, in axum's and OpenAPI's shared syntax (`/api/v1/tasks/{key}`).
    pub path: &'static str,
    /// OpenAPI's `operationId`.
    pub operation_id: &'static str,
    /// What it does, in a line.
    pub summary: &'static str,
    /// The group it is listed under.
    pub tag: &'static str,
    /// Its parameters.
    pub params: Vec<Param>,
    /// Its JSON request body's schema, and whether the body is required.
    pub request: Option<(SchemaFn, bool)>,
    /// Its success status, what it means, and its body.
    pub response: (u16, &'static str, Body),
    /// Who may call it; every route must say (a unit test checks).
    pub access: Option<Access>,
    /// Its handler.
    pub handler: MethodRouter<ApiState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn route<H, T>(method: Method, path: &'static str, operation_id: &'static str, handler: H) -> Route
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    let filter = if method == Method::POST {
        MethodFilter::POST
    } else {
        MethodFilter::GET
    };
    Route {
        method,
        path,
        operation_id,
        summary: "",
        tag: "",
        params: Vec::new(),
        request: None,
        response: (200, "OK", Body::Binary),
        access: None,
        handler: axum::routing::on(filter, handler),
    }
}

/// A GET route.
pub fn get<H, T>(path: &'static str, operation_id: &'static str, handler: H) -> Route
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    route(Method::GET, path, operation_id, handler)
}

/// A POST route; it takes an `Idempotency-Key`.
pub fn post<H, T>(path: &'static str, operation_id: &'static str, handler: H) -> Route
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    route(Method::POST, path, operation_id, handler).params(&[IDEMPOTENCY_KEY])
}

impl Route {
    /// Only callers allowed to do `action` may call it.
    pub fn requires(mut self, action: Action) -> Route {
        self.access = Some(Access::Requires(action));
        self
    }

    /// Anyone may call it, without credentials.
    pub fn public(mut self) -> Route {
        self.access = Some(Access::Public);
        self
    }

    /// Says what it does, listed under `tag`.
    pub fn summary(mut self, tag: &'static str, summary: &'static str) -> Route {
        self.tag = tag;
        self.summary = summary;
        self
    }

    /// Adds parameters.
    pub fn params(mut self, params: &[Param]) -> Route {
        self.params.extend_from_slice(params);
        self
    }

    /// Takes a JSON body of type `T`.
    pub fn body<T: JsonSchema>(mut self) -> Route {
        self.request = Some((schema_of::<T>, true));
        self
    }

    /// Takes a JSON body of type `T` that may be left out.
    pub fn optional_body<T: JsonSchema>(mut self) -> Route {
        self.request = Some((schema_of::<T>, false));
        self
    }

    /// Answers `status` with JSON of type `T`.
    pub fn returns<T: JsonSchema>(self, status: u16, description: &'static str) -> Route {
        self.returns_schema(status, description, schema_of::<T>)
    }

    /// Answers `status` with JSON of the schema `schema` writes.
    pub fn returns_schema(
        mut self,
        status: u16,
        description: &'static str,
        schema: SchemaFn,
    ) -> Route {
        self.response = (status, description, Body::Json(schema));
        self
    }

    /// Answers with `body`.
    pub fn returns_body(mut self, status: u16, description: &'static str, body: Body) -> Route {
        self.response = (status, description, body);
        self
    }
}

/// Every route of the API.
pub fn table() -> Vec<Route> {
    [
        crate::ops::routes(),
        crate::catalog::routes(),
        crate::plans::routes(),
        crate::tasks::routes(),
        crate::outputs::routes(),
        crate::workers::routes(),
        crate::users::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
