//! The example consumer (examples/consumer.rs) drains a real inbox and acknowledges
//! everything it processed.

mod common;

use std::process::Command;

use common::Server;

fn example_binary() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/consumer
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples").join("consumer")
}

#[test]
fn consumer_processes_and_acknowledges_every_event() {
    let server = Server::start(&[]);
    let org = server.generate("consumer", "enterprise");
    let events: Vec<String> =
        (0..250).map(|i| format!(r#"{{"type":"job","payload":{{"n":{i}}}}}"#)).collect();
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    assert_eq!(server.request("POST", "/api/events/batch", &org.headers(), Some(&body)).status, 200);

    let output = Command::new(example_binary())
        .args([&format!("http://{}", server.addr), &org.key, "40"])
        .output()
        .expect("the example is built by cargo test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.ends_with("processed 250 events\n"), "{stdout}");
    assert_eq!(stdout.matches("processing job ").count(), 250);

    let remaining = server.request("GET", "/api/inbox", &[("X-API-Key", &org.key)], None).json();
    assert_eq!(remaining["events"], serde_json::json!([]));
    let delivered =
        server.request("GET", "/api/inbox?status=delivered&limit=1000", &[("X-API-Key", &org.key)], None);
    assert_eq!(delivered.json()["events"].as_array().unwrap().len(), 250);
}
