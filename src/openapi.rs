//! The gateway's OpenAPI document (`openapi/openapi.yaml`), built into the binary and served at
//! `GET /openapi.yaml` when `server.expose_openapi` is on. `tests/api/openapi.rs` keeps it in
//! step with the routes in [`crate::server`] and the problem kinds in [`crate::problem`].

use actix_web::HttpResponse;

/// The OpenAPI 3.1 document, as committed.
pub const DOCUMENT: &str = include_str!("../openapi/openapi.yaml");

/// The media type the document is served with.
pub const CONTENT_TYPE: &str = "application/yaml";

/// `GET /openapi.yaml`: the document.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(DOCUMENT)
}
