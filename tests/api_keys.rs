//! Organisations and keys over real sockets: sign-up, the admin token, key display,
//! authentication variants, and rotation refusing the old key on every core.

mod common;

use common::Server;

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn generate_returns_the_contract_fields() {
    let server = Server::start(&[]);
    let response =
        server.request("POST", "/api/keys/generate", &[JSON], Some(r#"{"organization_name":"Acme Ltd"}"#));
    assert_eq!(response.status, 201);
    let json = response.json();
    assert_eq!(json["organization_name"], "Acme Ltd");
    assert_eq!(json["tier"], "free");
    assert_eq!(json["rate_limit_per_minute"], 100);
    assert!(json["organization_id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(json["api_key"].as_str().unwrap().len() >= 64, "at least 256 bits of key");
    assert!(json["created_at"].as_str().unwrap().ends_with('Z'));
    for (tier, limit) in [("pro", 1_000), ("business", 10_000), ("enterprise", 100_000)] {
        let body = format!(r#"{{"organization_name":"t","tier":"{tier}"}}"#);
        let json = server.request("POST", "/api/keys/generate", &[JSON], Some(&body)).json();
        assert_eq!(json["rate_limit_per_minute"], limit);
    }
}

#[test]
fn generate_refuses_bad_input_field_by_field() {
    let server = Server::start(&[]);
    let long_name = format!(r#"{{"organization_name":"{}"}}"#, "n".repeat(201));
    let cases = [
        (r#"{"organization_name":"x","tier":"gold"}"#, "tier"),
        (r#"{"tier":"pro"}"#, "organization_name"),
        (r#"{"organization_name":""}"#, "organization_name"),
        (r#"{"organization_name":42}"#, "organization_name"),
        (long_name.as_str(), "organization_name"),
        (r#"{"organization_name":"x","plan":"pro"}"#, "plan"),
    ];
    for (body, field) in cases {
        let response = server.request("POST", "/api/keys/generate", &[JSON], Some(body));
        assert_eq!(response.assert_error(400, "invalid_request")["field"], field, "{body}");
    }
    let max_name = format!(r#"{{"organization_name":"{}"}}"#, "é".repeat(200));
    assert_eq!(server.request("POST", "/api/keys/generate", &[JSON], Some(&max_name)).status, 201);
    server.request("POST", "/api/keys/generate", &[JSON], Some("{nope")).assert_error(400, "invalid_json");
    server
        .request(
            "POST",
            "/api/keys/generate",
            &[("Content-Type", "text/plain")],
            Some(r#"{"organization_name":"x"}"#),
        )
        .assert_error(415, "unsupported_media_type");
    server
        .request(
            "POST",
            "/api/keys/generate",
            &[("Content-Type", "application/json; charset=utf-8")],
            Some(r#"{"organization_name":"x"}"#),
        )
        .status
        .eq(&201)
        .then_some(())
        .expect("charset parameter allowed");
}

#[test]
fn admin_token_closes_open_sign_up() {
    let server = Server::start(&["--admin-token", "s3cret-admin"]);
    let body = Some(r#"{"organization_name":"closed"}"#);
    let missing =
        server.request("POST", "/api/keys/generate", &[JSON], body).assert_error(401, "unauthorized");
    // Regression: the message named the API key, the wrong credential for sign-up.
    assert!(missing["message"].as_str().unwrap().contains("admin token"), "{missing}");
    server
        .request("POST", "/api/keys/generate", &[JSON, ("Authorization", "Bearer wrong")], body)
        .assert_error(401, "unauthorized");
    let ok =
        server.request("POST", "/api/keys/generate", &[JSON, ("Authorization", "Bearer s3cret-admin")], body);
    assert_eq!(ok.status, 201);
}

#[test]
fn keys_show_the_organisation_never_the_key() {
    let server = Server::start(&[]);
    let org = server.generate("shown", "business");
    let response = server.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None);
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    assert_eq!(json["organization_id"], org.id.as_str());
    assert_eq!(json["tier"], "business");
    assert_eq!(json["rate_limit_per_minute"], 10_000);
    assert!(json["webhook_url"].is_null());
    let prefix = json["key_prefix"].as_str().unwrap();
    assert!(org.key.starts_with(prefix) && prefix.len() * 4 <= org.key.len());
    assert!(!response.text().contains(&org.key), "the key itself is never shown");
    assert!(json.get("api_key").is_none());
}

#[test]
fn authentication_variants() {
    let server = Server::start(&[]);
    let org = server.generate("auth", "free");
    let bearer = format!("Bearer {}", org.key);
    let lower_bearer = format!("bearer {}", org.key);
    for headers in [
        vec![("X-API-Key", org.key.as_str())],
        vec![("x-api-key", org.key.as_str())],
        vec![("Authorization", bearer.as_str())],
        vec![("authorization", lower_bearer.as_str())],
    ] {
        assert_eq!(server.request("GET", "/api/keys", &headers, None).status, 200, "{headers:?}");
    }
    let mut wrong_secret = org.key.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    for headers in [
        vec![],
        vec![("X-API-Key", "")],
        vec![("X-API-Key", "tk_nothex")],
        vec![("X-API-Key", wrong_secret.as_str())],
        vec![("Authorization", "Basic abc")],
        vec![("Authorization", "Bearer ")],
    ] {
        server.request("GET", "/api/keys", &headers, None).assert_error(401, "unauthorized");
        server.request("POST", "/api/events", &headers, Some("{}")).assert_error(401, "unauthorized");
    }
    // The wrong key stays refused (negative cache) and the right one keeps working.
    server
        .request("GET", "/api/keys", &[("X-API-Key", &wrong_secret)], None)
        .assert_error(401, "unauthorized");
    assert_eq!(server.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).status, 200);
}

#[test]
fn rotation_refuses_the_old_key_on_every_core_before_it_answers() {
    let server = Server::start(&[]);
    let org = server.generate("rotating", "pro");
    // Warm the old key into the cache of whichever core each connection landed on;
    // with 24 connections over 2 cores, both cores hold it (miss odds: 2^-23).
    let mut warmed: Vec<_> = (0..24).map(|_| server.connect()).collect();
    for conn in &mut warmed {
        assert_eq!(conn.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).status, 200);
    }
    let rotated = server.request("POST", "/api/keys/rotate", &[("X-API-Key", &org.key)], None);
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let json = rotated.json();
    let new_key = json["api_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, org.key);
    assert!(json["rotated_at"].as_str().unwrap().ends_with('Z'));
    let event = Some(r#"{"type":"t","payload":{}}"#);
    for conn in &mut warmed {
        conn.request("GET", "/api/keys", &[("X-API-Key", &org.key)], None).assert_error(401, "unauthorized");
        conn.request("POST", "/api/events", &[("X-API-Key", &org.key), JSON], event)
            .assert_error(401, "unauthorized");
        conn.request("POST", "/api/keys/rotate", &[("X-API-Key", &org.key)], None)
            .assert_error(401, "unauthorized");
        assert_eq!(conn.request("POST", "/api/events", &[("X-API-Key", &new_key), JSON], event).status, 202);
    }
    let shown = server.request("GET", "/api/keys", &[("X-API-Key", &new_key)], None).json();
    assert!(new_key.starts_with(shown["key_prefix"].as_str().unwrap()));
}
