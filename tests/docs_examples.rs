//! Every `sh` example in docs/api.md, run with the real curl against a live server.
//! Each gets a fresh organisation ($KEY) with one event ($EVENT_ID); the example must
//! exit 0 and print a success body (JSON without "error", or the metrics text).

mod common;

use std::process::Command;

use common::Server;

fn examples() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let text = std::fs::read_to_string(path).expect("docs/api.md");
    text.split("```sh\n").skip(1).map(|block| block.split("```").next().unwrap().trim().to_string()).collect()
}

#[test]
fn every_api_example_runs_against_a_live_server() {
    let server = Server::start(&[]);
    let examples = examples();
    assert!(examples.len() >= 12, "one example per route at least");
    let mut routes_covered = std::collections::BTreeSet::new();
    for example in &examples {
        let org = server.generate("docs", "pro");
        let event = org.post_event(&server, r#"{"type":"docs.example","payload":{}}"#).json();
        let command = example.replace("localhost:8080", &server.addr.to_string());
        let output = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("KEY", &org.key)
            .env("EVENT_ID", event["id"].as_str().unwrap())
            .output()
            .expect("sh and curl are installed (scripts/test installs curl)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{example}\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if stdout.starts_with("# HELP") {
            routes_covered.insert("/metrics".to_string());
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{example}: not JSON ({e}): {stdout}"));
        assert!(json.get("error").is_none(), "{example}\n{json}");
        // Every route the example calls: a call's output goes to the next through a
        // variable (LEASE_ID), as a user would write it.
        for call in example.split("localhost:8080").skip(1) {
            let path = call.split(['"', ' ', '?', ')']).next().unwrap();
            routes_covered.insert(path.replace("$EVENT_ID", "{id}").replace("$LEASE_ID", "{id}"));
        }
    }
    for (route, _, _) in triggerd::api::ROUTES {
        if *route != "/health" {
            assert!(routes_covered.contains(*route), "no example for {route}: {routes_covered:?}");
        }
    }
}
