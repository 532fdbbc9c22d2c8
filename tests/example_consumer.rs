//! The example consumer (examples/consumer.rs) drains a real inbox through leases,
//! acknowledging what it processed and releasing what it could not (which ends as
//! poison after 5 leases).

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
    let events: Vec<String> = (0..250)
        .map(|i| {
            let kind = if i % 50 == 7 { "broken" } else { "job" };
            format!(r#"{{"type":"{kind}","payload":{{"n":{i}}}}}"#)
        })
        .collect();
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    assert_eq!(server.request("POST", "/api/events/batch", &org.headers(), Some(&body)).status, 200);

    let output = Command::new(example_binary())
        .args([&format!("http://{}", server.addr), &org.key, "40", "--fail-type", "broken"])
        .output()
        .expect("the example is built by cargo test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("acknowledged 245 events"), "{stdout}");
    assert_eq!(stdout.matches("processing job ").count(), 245);

    let pending = server.request("GET", "/api/inbox?status=pending", &[("X-API-Key", &org.key)], None).json();
    assert_eq!(pending["events"], serde_json::json!([]));
    let delivered =
        server.request("GET", "/api/inbox?status=delivered&limit=1000", &[("X-API-Key", &org.key)], None);
    assert_eq!(delivered.json()["events"].as_array().unwrap().len(), 245);
    // The 5 it could not process were released each time, then set aside as poison.
    let failed = server.request("GET", "/api/inbox?status=failed", &[("X-API-Key", &org.key)], None).json();
    let failed = failed["events"].as_array().unwrap();
    assert_eq!(failed.len(), 5);
    assert!(failed.iter().all(|e| e["type"] == "broken" && e["leases"] == 5), "{failed:?}");
}
