//! The example stream consumer (examples/stream.rs) reads every event in order, saves
//! its position, and a second run resumes exactly after it, including events that
//! committed while it was away.

mod common;

use std::process::Command;

use common::Server;

fn example_binary() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/stream
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples").join("stream")
}

fn post(server: &Server, org: &common::Org, n: usize) -> String {
    let response = org.post_event(server, &format!(r#"{{"type":"t","payload":{{"n":{n}}}}}"#));
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_string()
}

/// Runs the example for `count` events; the ids it printed.
fn run(server: &Server, org: &common::Org, position_file: &std::path::Path, count: usize) -> Vec<String> {
    let output = Command::new(example_binary())
        .args([&format!("http://{}", server.addr), &org.key, "--count", &count.to_string()])
        .args(["--position-file".as_ref(), position_file.as_os_str()])
        .output()
        .expect("the example is built by cargo test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn the_stream_example_tails_and_resumes_from_its_saved_position() {
    let server = Server::start(&[]);
    let org = server.generate("tail", "pro");
    let posted: Vec<String> = (0..5).map(|n| post(&server, &org, n)).collect();
    let directory = std::env::temp_dir().join(format!("triggerd-stream-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let position_file = directory.join("stream.position");

    assert_eq!(run(&server, &org, &position_file, 3), posted[..3]);
    assert!(position_file.exists(), "the position is saved");
    let later: Vec<String> = (5..7).map(|n| post(&server, &org, n)).collect();
    let mut rest = posted[3..].to_vec();
    rest.extend(later);
    assert_eq!(run(&server, &org, &position_file, 4), rest, "resumed exactly after the first run");
    let _ = std::fs::remove_dir_all(&directory);
}
