//! The JSON Schema of one audit line, generated from the types that write it, so that
//! `docs/audit.schema.json` cannot drift from the records: [`generate`] is its single source, and
//! a test fails when the committed file differs from what it returns.
//!
//! The record types (`event.rs`, `crate::domain`) derive `JsonSchema` and carry the constraints
//! as `schemars` attributes. What no record type holds is described next to the code that adds
//! it: the chain's `seq` and `prev` ([`super::chain::ChainFields`]), the `late` mark of an outcome
//! record written late ([`super::writer::LateMark`]) and the checkpoint
//! ([`super::writer::Checkpoint`]). This module puts them together: one closed object per line
//! kind (`additionalProperties: false`, so a stray field such as a token makes a record invalid),
//! and the hashed form of every field [`super::redact`] hashes.

use super::chain::ChainFields;
use super::event::{AdminRecord, RequestRecord, RunRecord};
pub use super::formats::{FORMAT_VERSION, KEY_ID, PROBLEM_KIND, SHA256_HEX, SIGNATURE};
use super::redact::{PREFIX, SENSITIVE_FIELDS};
use super::writer::{Checkpoint, LateMark};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::{json, Map, Value};

/// The schema's `$id`; it names the format version, which a new format would change.
const ID: &str = "urn:sync-gateway:audit:v1";

/// The JSON Schema of an audit line, as committed in `docs/audit.schema.json`.
pub fn generate() -> Value {
    // Serialize contract: a field skipped when empty (`skip_serializing_if`) is optional, every
    // other field required, which is what the writer produces.
    let mut gen = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let chain = ChainFields::json_schema(&mut gen);
    let late = LateMark::json_schema(&mut gen);
    let kinds = [
        ("request", RequestRecord::json_schema(&mut gen), true),
        ("run", RunRecord::json_schema(&mut gen), true),
        ("admin", AdminRecord::json_schema(&mut gen), false),
        ("checkpoint", Checkpoint::json_schema(&mut gen), false),
    ];
    let mut defs = gen.take_definitions(true);
    let mut one_of = Vec::new();
    for (kind, record, may_be_late) in kinds {
        let line = line(kind, &chain, record, may_be_late.then_some(&late));
        defs.insert(kind.into(), line);
        one_of.push(json!({ "$ref": format!("#/$defs/{kind}") }));
    }
    defs.insert(
        "hashed".into(),
        json!({
            "description": "A sensitive value hashed with the audit HMAC key (`audit.hmac_key_file`).",
            "type": "string",
            "pattern": format!("^{PREFIX}[0-9a-f]{{64}}$"),
        }),
    );
    let mut doc = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": ID,
        "title": format!("sync-gateway audit record, format v{FORMAT_VERSION}"),
        "description": "One line of the audit trail (see docs/audit.md). Generated from the record types by `sync-gateway audit schema`; do not edit by hand.",
        "oneOf": one_of,
        "$defs": defs,
    });
    walk(&mut doc, &mut |obj| {
        absent_is_never_null(obj);
        admit_hashes(obj);
    });
    doc
}

/// One line kind: the chain's fields, `v` and `kind`, the record's own fields and, for outcome
/// records, the late mark, as one closed object. Merged rather than combined with `allOf`
/// because `additionalProperties` sees only the `properties` beside it.
fn line(kind: &str, chain: &Schema, record: Schema, late: Option<&Schema>) -> Value {
    let Value::Object(mut record) = record.to_value() else {
        unreachable!("a struct's schema is an object")
    };
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut take = |from: &Value| {
        if let Some(p) = from.get("properties").and_then(Value::as_object) {
            for (k, v) in p {
                properties.insert(k.clone(), v.clone());
            }
        }
        if let Some(r) = from.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
    };
    take(chain.as_value());
    take(&json!({
        "properties": { "kind": { "const": kind } },
        "required": ["kind"],
    }));
    let record_value = Value::Object(record.clone());
    take(&record_value);
    // A flattened enum (the admin events) arrives as a `oneOf` of variants, each with its own
    // fields and their requirements; the closed object must still list every field.
    if let Some(variants) = record.get("oneOf").and_then(Value::as_array) {
        let mut lifted: Map<String, Value> = Map::new();
        for variant in variants {
            for (k, v) in variant["properties"].as_object().into_iter().flatten() {
                match lifted.get_mut(k) {
                    None => {
                        lifted.insert(k.clone(), v.clone());
                    }
                    Some(seen) if seen == v => {}
                    Some(seen) => *seen = either(seen, v),
                }
            }
        }
        properties.extend(lifted);
    }
    let mut dependent = None;
    if let Some(late) = late {
        let Value::Object(late) = late.as_value().clone() else {
            unreachable!("a struct's schema is an object")
        };
        // The mark's fields come together or not at all.
        let names: Vec<Value> = late["required"].as_array().cloned().unwrap_or_default();
        dependent = Some(Value::Object(
            names
                .iter()
                .filter_map(Value::as_str)
                .map(|n| {
                    let others: Vec<Value> = names
                        .iter()
                        .filter(|o| o.as_str() != Some(n))
                        .cloned()
                        .collect();
                    (n.to_string(), Value::Array(others))
                })
                .collect(),
        ));
        for (k, v) in late["properties"].as_object().into_iter().flatten() {
            properties.insert(k.clone(), v.clone());
        }
    }
    // `required` in the order the line has its fields, without repeats.
    let mut seen = std::collections::BTreeSet::new();
    required.retain(|r| seen.insert(r.to_string()));

    let mut out = Map::new();
    for key in ["title", "description"] {
        if let Some(v) = record.remove(key) {
            out.insert(key.into(), v);
        }
    }
    out.insert("type".into(), "object".into());
    out.insert("properties".into(), Value::Object(properties));
    out.insert("required".into(), Value::Array(required));
    out.insert("additionalProperties".into(), false.into());
    for key in ["oneOf", "allOf"] {
        if let Some(v) = record.remove(key) {
            out.insert(key.into(), v);
        }
    }
    if let Some(d) = dependent {
        out.insert("dependentRequired".into(), d);
    }
    Value::Object(out)
}

/// The property schema that admits what either variant's does: the discriminator's `const`s
/// become one `enum`; anything else is left to the variants to check.
fn either(a: &Value, b: &Value) -> Value {
    let values = |s: &Value| -> Vec<Value> {
        match (s.get("const"), s.get("enum").and_then(Value::as_array)) {
            (Some(c), _) => vec![c.clone()],
            (None, Some(e)) => e.clone(),
            _ => Vec::new(),
        }
    };
    let (va, vb) = (values(a), values(b));
    if va.is_empty() || vb.is_empty() {
        return json!(true);
    }
    let mut all = va;
    all.extend(vb);
    json!({ "type": "string", "enum": all })
}

/// A field that may be absent is skipped when empty (`skip_serializing_if`), never written as
/// `null`: schemars admits `null` for every `Option`, so it is taken out where the field is
/// optional. (Required `Option`s, such as Graph's `status` when no answer came, keep `null`.)
fn absent_is_never_null(obj: &mut Map<String, Value>) {
    let required: Vec<String> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Object(props)) = obj.get_mut("properties") else {
        return;
    };
    for (name, schema) in props.iter_mut() {
        if required.contains(name) {
            continue;
        }
        let Value::Object(s) = schema else { continue };
        if let Some(Value::Array(types)) = s.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let t = types.remove(0);
                s.insert("type".into(), t);
            }
        }
        if let Some(Value::Array(any)) = s.get("anyOf") {
            let rest: Vec<Value> = any
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                .cloned()
                .collect();
            if rest.len() == 1 && rest.len() < any.len() {
                s.remove("anyOf");
                if let Value::Object(inner) = &rest[0] {
                    for (k, v) in inner {
                        s.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
    }
}

/// With hashing on, every string field named in [`SENSITIVE_FIELDS`], at any depth, is written
/// as `hmac-sha256:<hex>` (see `redact.rs`): each such property admits that form too.
fn admit_hashes(obj: &mut Map<String, Value>) {
    let Some(Value::Object(props)) = obj.get_mut("properties") else {
        return;
    };
    for name in SENSITIVE_FIELDS {
        let Some(Value::Object(s)) = props.get_mut(*name) else {
            continue;
        };
        let description = s.remove("description");
        let clear = Value::Object(std::mem::take(s));
        let alternatives = match clear {
            Value::Object(ref c) if c.len() == 1 && c.contains_key("anyOf") => {
                let mut a = c["anyOf"].as_array().cloned().unwrap_or_default();
                a.push(json!({ "$ref": "#/$defs/hashed" }));
                a
            }
            _ => vec![clear, json!({ "$ref": "#/$defs/hashed" })],
        };
        if let Some(d) = description {
            s.insert("description".into(), d);
        }
        s.insert("anyOf".into(), Value::Array(alternatives));
    }
}

/// Calls `f` on every object in `v`, parents before their children.
fn walk(v: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(obj) => {
            f(obj);
            obj.values_mut().for_each(|c| walk(c, f));
        }
        Value::Array(items) => items.iter_mut().for_each(|c| walk(c, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the committed schema lives, from the crate's root.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/audit.schema.json");

    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let generated = generate();
        if std::env::var_os("UPDATE_AUDIT_SCHEMA").is_some() {
            let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
            std::fs::write(COMMITTED, text).unwrap();
        }
        let committed: Value = serde_json::from_str(
            &std::fs::read_to_string(COMMITTED).expect("docs/audit.schema.json"),
        )
        .expect("docs/audit.schema.json is JSON");
        assert!(
            committed == generated,
            "docs/audit.schema.json differs from the schema generated from the record types; \
             regenerate it with `cargo run -- audit schema > docs/audit.schema.json` (or \
             `UPDATE_AUDIT_SCHEMA=1 cargo test --lib audit::schema`) and commit it"
        );
    }

    /// What a case changes in a valid line, and what to call it when it is wrongly accepted.
    type Change = (&'static str, fn(&mut Value));

    /// A valid `request` line with hashed sensitive values; the cases below change one thing.
    fn hashed_request() -> Value {
        let hashed = format!("{PREFIX}{}", "ab".repeat(32));
        json!({
            "seq": 7, "prev": "0".repeat(64), "v": 1, "kind": "request",
            "id": "0190a7f0-0000-7000-8000-000000000000", "time": "2026-01-01T00:00:00Z",
            "action": "sync", "decision": "allowed", "status": 202, "duration_ms": 3,
            "client_ip": hashed, "reason": hashed,
            "caller": { "kind": "user", "tenant_id": "t", "upn": hashed },
        })
    }

    #[test]
    fn the_schema_admits_hashed_values_and_refuses_what_the_writer_never_writes() {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&generate())
            .expect("the generated schema compiles");
        let line = hashed_request();
        let errors: Vec<String> = validator
            .iter_errors(&line)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let refused: [Change; 9] = [
            ("an unknown field", |l| l["token"] = json!("eyJ")),
            ("an unknown nested field", |l| {
                l["caller"]["token"] = json!("eyJ")
            }),
            ("null for an absent field", |l| l["code"] = Value::Null),
            ("late without recorded_at", |l| l["late"] = json!(true)),
            ("another format version", |l| l["v"] = json!(2)),
            ("seq 0", |l| l["seq"] = json!(0)),
            ("a malformed hash", |l| {
                l["client_ip"] = json!("hmac-sha256:xyz")
            }),
            ("a status out of range", |l| l["status"] = json!(42)),
            ("an unknown decision", |l| l["decision"] = json!("maybe")),
        ];
        for (what, change) in refused {
            let mut l = line.clone();
            change(&mut l);
            assert!(!validator.is_valid(&l), "{what} was accepted: {l}");
        }
        let admin = json!({
            "seq": 1, "prev": "0".repeat(64), "v": 1, "kind": "admin",
            "id": "0190a7f0-0000-7000-8000-000000000000", "time": "2026-01-01T00:00:00Z",
            "event": "start", "version": "0.1.0", "sink": "file",
        });
        assert!(validator.is_valid(&admin));
        let mut no_sink = admin.clone();
        no_sink.as_object_mut().unwrap().remove("sink");
        assert!(!validator.is_valid(&no_sink), "a start without its sink");
        let mut unknown = admin.clone();
        unknown["event"] = json!("reboot");
        assert!(!validator.is_valid(&unknown), "an unknown admin event");
        let mut late_admin = admin;
        late_admin["late"] = json!(true);
        late_admin["recorded_at"] = json!("2026-01-01T00:00:01Z");
        assert!(
            !validator.is_valid(&late_admin),
            "only outcome records are late"
        );
    }

    #[test]
    fn every_line_kind_is_a_closed_object_with_the_chain_fields() {
        let doc = generate();
        for kind in ["request", "run", "admin", "checkpoint"] {
            let def = &doc["$defs"][kind];
            assert_eq!(def["additionalProperties"], false, "{kind}");
            assert_eq!(def["properties"]["kind"]["const"], kind);
            let required = def["required"].as_array().unwrap();
            for f in ["seq", "prev", "v", "kind"] {
                assert!(required.contains(&json!(f)), "{kind} lacks {f}");
            }
        }
        assert!(doc["$defs"]["checkpoint"]["properties"]["late"].is_null());
        assert_eq!(
            doc["$defs"]["run"]["dependentRequired"]["late"],
            json!(["recorded_at"])
        );
    }
}
