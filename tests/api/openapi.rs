//! The OpenAPI document (`openapi/openapi.yaml`) against the code: the routes registered in
//! `src/server.rs` and the problem kinds `GatewayError::kind` returns in `src/error.rs`, both
//! read from the source text (like `every_problem_type_is_in_the_readmes_error_table`), so a new
//! route or kind cannot be forgotten in the document; its examples against its own schemas; and
//! `server.expose_openapi` serving it.

use crate::helpers::{header, problem_of, problem_type, spawn_app, spawn_app_with, Setup};
use serde_json::Value;
use std::collections::BTreeSet;

const DOCUMENT: &str = include_str!("../../openapi/openapi.yaml");
const SERVER_RS: &str = include_str!("../../src/server.rs");
const ERROR_RS: &str = include_str!("../../src/error.rs");
const PREFIX: &str = "urn:sync-gateway:problem:";

fn document() -> Value {
    serde_norway::from_str(DOCUMENT).expect("openapi.yaml is valid YAML")
}

/// (path, lower-case method) of every route `Application::build` registers: `readable(...)`
/// serves GET (and HEAD, implied), `web::resource(...)` the methods of its `.route(...)`s.
fn routes_in_code() -> BTreeSet<(String, String)> {
    let start = SERVER_RS
        .find("App::new()")
        .expect("server.rs builds an App");
    let end = start
        + SERVER_RS[start..]
            .find(".default_service(web::to(pipeline::not_found))")
            .expect("the App ends with the 404 default service");
    let app = &SERVER_RS[start..end];
    let mut starts: Vec<(usize, &str, bool)> = Vec::new();
    for (marker, readable) in [("web::resource(\"", false), ("readable(\"", true)] {
        for (i, _) in app.match_indices(marker) {
            let rest = &app[i + marker.len()..];
            starts.push((i, &rest[..rest.find('"').unwrap()], readable));
        }
    }
    starts.sort();
    let mut routes = BTreeSet::new();
    for (n, &(i, path, readable)) in starts.iter().enumerate() {
        if readable {
            routes.insert((path.to_string(), "get".to_string()));
            continue;
        }
        let segment = &app[i..starts.get(n + 1).map_or(app.len(), |s| s.0)];
        for method in ["get", "post", "put", "patch", "delete", "head"] {
            if segment.contains(&format!("web::{method}()")) {
                routes.insert((path.to_string(), method.to_string()));
            }
        }
    }
    routes
}

/// (path, method) of every operation in the document; `head` is implied by `get`, as in the code.
fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() && !(method == "head" && item.get("get").is_some()) {
                routes.insert((path.clone(), method.to_string()));
            }
        }
    }
    routes
}

/// Every kind `GatewayError::kind` can return, read from its source text.
fn kinds_in_code() -> BTreeSet<String> {
    let start = ERROR_RS.find("pub fn kind(&self)").unwrap();
    ERROR_RS[start..]
        .split("=> \"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// The `ProblemType` schema's types (kind → its description).
fn documented_types(doc: &Value) -> Vec<(String, String)> {
    doc["components"]["schemas"]["ProblemType"]["oneOf"]
        .as_array()
        .expect("ProblemType is a oneOf of consts")
        .iter()
        .map(|t| {
            let uri = t["const"].as_str().expect("a const type");
            let kind = uri
                .strip_prefix(PREFIX)
                .expect("a sync-gateway problem type");
            let description = t["description"].as_str().expect("every type has a meaning");
            (kind.to_string(), description.to_string())
        })
        .collect()
}

/// Every string in `v` (recursively).
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn every_route_in_the_code_is_in_the_openapi_document_and_the_other_way_round() {
    let code = routes_in_code();
    // The parser must see the routes it is meant to see, or this test could not fail.
    for route in [
        ("/sync", "post"),
        ("/sync/runs/{id}", "get"),
        ("/healthz", "get"),
    ] {
        assert!(
            code.contains(&(route.0.to_string(), route.1.to_string())),
            "{route:?} not found in server.rs: {code:?}"
        );
    }
    let documented = routes_in_document(&document());
    let undocumented: Vec<_> = code.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes in src/server.rs missing from openapi/openapi.yaml: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&code).collect();
    assert!(
        unserved.is_empty(),
        "operations in openapi/openapi.yaml that src/server.rs does not route: {unserved:?}"
    );
}

#[test]
fn every_problem_type_the_code_can_produce_is_in_the_openapi_document() {
    let code = kinds_in_code();
    assert!(code.len() >= 26, "{code:?}");
    let documented: BTreeSet<String> = documented_types(&document())
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    let missing: Vec<_> = code.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "problem types missing from ProblemType in openapi/openapi.yaml: {missing:?}"
    );
    let unknown: Vec<_> = documented.iter().filter(|k| !code.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "openapi/openapi.yaml documents problem types the code cannot produce: {unknown:?}"
    );
}

/// Each error response (`components.responses`) narrows `type` to some kinds and `status` to
/// one value: every kind it names must be a documented type whose meaning starts with that
/// status, and every documented type must be answered by some response.
#[test]
fn every_problem_type_is_answered_by_a_response_with_its_documented_status() {
    let doc = document();
    let types = documented_types(&doc);
    let mut answered = BTreeSet::new();
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        let schema = &response["content"]["application/problem+json"]["schema"]["allOf"][1];
        let status = schema["properties"]["status"]["const"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} has no status const"));
        let mut uris = Vec::new();
        strings(&schema["properties"]["type"]["enum"], &mut uris);
        assert!(!uris.is_empty(), "{name} names no problem type");
        for uri in uris {
            let kind = uri.strip_prefix(PREFIX).unwrap();
            let (_, meaning) = types
                .iter()
                .find(|(k, _)| k == kind)
                .unwrap_or_else(|| panic!("{name} answers {kind}, which ProblemType lacks"));
            let statuses = meaning.split(':').next().unwrap();
            assert!(
                statuses.split(" or ").any(|s| s == status.to_string()),
                "{name} answers {kind} with {status}, but ProblemType says {statuses}"
            );
            answered.insert(kind.to_string());
        }
    }
    for (kind, _) in &types {
        assert!(answered.contains(kind), "no response answers {kind}");
    }
    // And no other problem type URI appears anywhere (a typo in an example, say).
    let mut all = Vec::new();
    strings(&doc, &mut all);
    for s in all.into_iter().filter(|s| s.starts_with(PREFIX)) {
        let kind = &s[PREFIX.len()..];
        assert!(
            types.iter().any(|(k, _)| k == kind),
            "{s} is used in the document but not a ProblemType"
        );
    }
}

/// Every media type object with a schema and examples, as (where, schema, example).
fn examples(doc: &Value) -> Vec<(String, Value, Value)> {
    let mut found = Vec::new();
    fn walk(v: &Value, at: String, found: &mut Vec<(String, Value, Value)>) {
        let Some(o) = v.as_object() else { return };
        if let (Some(schema), true) = (
            o.get("schema"),
            o.contains_key("example") || o.contains_key("examples"),
        ) {
            if let Some(e) = o.get("example") {
                found.push((at.clone(), schema.clone(), e.clone()));
            }
            for (name, e) in o
                .get("examples")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                found.push((format!("{at}/{name}"), schema.clone(), e["value"].clone()));
            }
        }
        for (k, v) in o {
            walk(v, format!("{at}/{k}"), found);
        }
    }
    walk(&doc["paths"], "paths".into(), &mut found);
    walk(
        &doc["components"]["responses"],
        "responses".into(),
        &mut found,
    );
    found
}

#[test]
fn every_example_in_the_openapi_document_matches_its_schema() {
    let doc = document();
    let found = examples(&doc);
    assert!(found.len() >= 10, "{} examples", found.len());
    for (at, schema, example) in found {
        // The schema with the document's components beside it, so `#/components/...` resolves.
        let mut schema = schema;
        if let Some(o) = schema.as_object_mut() {
            o.insert("components".into(), doc["components"].clone());
            o.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
        }
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{at}: the schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&example)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{at}: {errors:?}");
    }
}

#[tokio::test]
async fn with_expose_openapi_the_gateway_serves_its_document() {
    let app = spawn_app_with(Setup::default().set("server.expose_openapi", "true")).await;
    let resp = app.get("/openapi.yaml").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "application/yaml");
    assert_eq!(resp.text().await.unwrap(), DOCUMENT);
    // Like every read route: 405 with Allow for other methods.
    let resp = app
        .http
        .post(format!("{}/openapi.yaml", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(header(&resp, "allow"), "GET, HEAD");
}

#[tokio::test]
async fn by_default_the_document_is_not_served() {
    let app = spawn_app().await;
    let resp = app.get("/openapi.yaml").await;
    assert_eq!(resp.status(), 404);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("not-found"));
}
