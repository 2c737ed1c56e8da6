//! The form body of Entra's POST endpoints (token, device authorization, the device page):
//! `application/x-www-form-urlencoded` fields, the first occurrence of a name winning.

use std::collections::HashMap;

use actix_web::HttpRequest;

/// Form fields; the first occurrence of a name wins.
pub(super) type Form = HashMap<String, String>;

/// The fields of `body`; none when the request is not a form (Entra reads parameters only from
/// a form body, so anything else looks like missing fields).
pub(super) fn parse_form(req: &HttpRequest, body: &[u8]) -> Form {
    let is_form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    let mut form = Form::new();
    if is_form {
        for (k, v) in url::form_urlencoded::parse(body) {
            form.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    form
}
