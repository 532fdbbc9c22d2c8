//! Every `sh` example in docs/api.md, run with the real curl against a live server, in
//! order, as one shell session: exactly what a user pasting them one after the other
//! gets. The examples capture what later ones need themselves (the key in `KEY`, an
//! event id in `EVENT_ID`, a lease in `LEASE_ID`); each must print a success body
//! (JSON without "error", or the metrics text).

mod common;

use std::process::Command;

use common::Server;

fn examples() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let text = std::fs::read_to_string(path).expect("docs/api.md");
    text.split("```sh\n").skip(1).map(|block| block.split("```").next().unwrap().trim().to_string()).collect()
}

/// Separates the examples' outputs in the session's stdout.
const MARKER: &str = "@@@ example";

#[test]
fn every_api_example_runs_in_order_against_a_live_server() {
    let server = Server::start(&[]);
    let examples = examples();
    assert!(examples.len() >= 12, "one example per route at least");
    let mut session = String::from("set -e\n");
    for (index, example) in examples.iter().enumerate() {
        session.push_str(&format!(
            "echo '{MARKER} {index}'\n{}\necho\n",
            example.replace("localhost:8080", &server.addr.to_string())
        ));
    }
    session.push_str(&format!("echo '{MARKER} end'\n"));
    let directory = std::env::temp_dir().join(format!("triggerd-docs-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(&session)
        .current_dir(&directory)
        .env_remove("KEY")
        .env_remove("EVENT_ID")
        .output()
        .expect("sh and curl are installed (scripts/test installs curl)");
    let _ = std::fs::remove_dir_all(&directory);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let outputs: Vec<&str> = stdout.split(MARKER).skip(1).collect();
    assert_eq!(outputs.len(), examples.len() + 1, "every example ran:\n{stdout}");
    let mut routes_covered = std::collections::BTreeSet::new();
    for (example, output) in examples.iter().zip(&outputs) {
        let printed = output.split_once('\n').map_or("", |(_, rest)| rest).trim();
        if printed.starts_with("# HELP") {
            routes_covered.insert("/metrics".to_string());
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_str(printed).unwrap_or_else(|e| panic!("{example}: not JSON ({e}): {printed}"));
        assert!(json.get("error").is_none(), "{example}\n{json}");
        // Every route the example calls; variables stand for path segments.
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
