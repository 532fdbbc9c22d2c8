//! docs/openapi.json documents exactly the routes the router serves, and every
//! operation's error responses use the contract's error schema.

use std::collections::BTreeSet;

use triggerd::api::ROUTES;

fn document() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json")).expect("valid JSON")
}

#[test]
fn every_served_route_is_documented_and_vice_versa() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations.as_object().unwrap().keys().map(move |method| (path.clone(), method.to_uppercase()))
        })
        .collect();
    // HEAD is served wherever GET is; OpenAPI documents the GET.
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, _, allow)| {
            allow
                .split(", ")
                .filter(|m| *m != "HEAD")
                .map(move |method| (path.to_string(), method.to_string()))
        })
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn operations_declare_their_responses_and_refs_resolve() {
    let doc = document();
    let text = doc.to_string();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}"));
            assert!(
                responses.keys().any(|code| code.starts_with('2')),
                "{method} {path} has a success response"
            );
            assert!(operation["operationId"].is_string(), "{method} {path}");
        }
    }
    for reference in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", reference.split('"').next().unwrap());
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

#[test]
fn the_pushed_request_is_described_as_a_webhook() {
    let doc = document();
    let push = &doc["webhooks"]["event"]["post"];
    let headers: BTreeSet<&str> =
        push["parameters"].as_array().expect("headers").iter().filter_map(|p| p["name"].as_str()).collect();
    for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(headers.contains(header), "{header} in {headers:?}");
    }
    let body = &push["requestBody"]["content"]["application/json"]["schema"]["required"];
    assert_eq!(body, &serde_json::json!(["event_id", "type", "payload", "created_at"]));
}
