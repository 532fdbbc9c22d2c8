//! The command line: every `serve` option is documented with its environment
//! variable, `triggerd check` reports on this host, and open sign-up is refused on a
//! public address unless the operator asks for it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;

fn triggerd(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd")).args(args).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn every_serve_option_reads_its_environment_variable() {
    let (ok, help) = triggerd(&["serve", "--help"]);
    assert!(ok);
    let options: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '[']).next().unwrap())
        .filter(|name| *name != "help")
        .collect();
    assert!(options.len() >= 30, "{options:?}");
    for option in options {
        let env = if option == "database-url" {
            "DATABASE_URL".to_string()
        } else {
            format!("TRIGGERD_{}", option.to_uppercase().replace('-', "_"))
        };
        assert!(help.contains(&format!("[env: {env}")), "--{option} does not document {env}");
    }
}

#[test]
fn bad_settings_are_refused_with_the_option_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--retry-schedule", "5 minutes", "--database-url", "host=/nonexistent"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--retry-schedule"));
}

#[test]
fn check_reports_on_this_host() {
    let (runnable, report) = triggerd(&["check", "--http-cores", "2"]);
    assert!(
        report.lines().all(|l| l.starts_with("ok ") || l.starts_with("warn ") || l.starts_with("FAIL ")),
        "{report}"
    );
    assert!(report.contains("io_uring"));
    assert!(report.contains("memlock"));
    assert_eq!(runnable, !report.contains("FAIL"), "exit status follows the failures");
}

#[test]
fn config_file_values_yield_to_environment_and_flags() {
    let dir = std::env::temp_dir().join(format!("triggerd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("triggerd.conf");
    std::fs::write(
        &file,
        "# comment\nhttp-cores = 3\nring-capacity = 64\nadmin-token = hush\nlisten = 0.0.0.0:9000\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--config", file.to_str().unwrap(), "--print-config", "--ring-capacity", "128"])
        .env("TRIGGERD_LISTEN", "127.0.0.1:7000")
        .env_remove("TRIGGERD_HTTP_CORES")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("http-cores = 3  # file"), "{printed}");
    assert!(printed.contains("ring-capacity = 128  # flag"), "{printed}");
    assert!(printed.contains("listen = 127.0.0.1:7000  # environment"), "{printed}");
    assert!(printed.contains("admin-token = ********  # file"), "the secret is masked: {printed}");
    assert!(printed.contains("batch-events-max = 512  # default"), "{printed}");
    std::fs::write(&file, "colour = blue\n").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--config", file.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown option \"colour\""));
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let Ok(database) = std::env::var("DATABASE_URL") else { panic!("run through scripts/test") };
    let mut child = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-cores",
            "1",
            "--log-format",
            "json",
            "--log",
            "info",
        ])
        .args(["--database-url", &database])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = 0;
    for line in lines {
        let line = line.unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(json["level"].is_string() && json["timestamp"].is_string(), "{json}");
        seen += 1;
        if json["fields"]["message"] == "cores started" {
            break;
        }
    }
    assert!(seen >= 1);
    let _ = child.kill();
    let _ = child.wait();
}

/// `serve` with `args` and a database URL that cannot work: the run must end on
/// validation, before any database (embedded or not) is touched, or it would fail
/// with a connection error instead. Returns whether it succeeded and its stderr.
fn serve_refused(args: &[&str]) -> (bool, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .arg("serve")
        .args(args)
        .args(["--database-url", "host=/nonexistent/triggerd-must-not-connect dbname=none"])
        .env_remove("TRIGGERD_ADMIN_TOKEN")
        .env_remove("TRIGGERD_OPEN_SIGNUP")
        .env_remove("TRIGGERD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    // A guard against a hang, never a wait for something: validation takes milliseconds.
    let Ok(output) = outcome.recv_timeout(Duration::from_secs(30)) else {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("serve {args:?} is still running: it got past validation");
    };
    let output = output.unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn open_signup_on_a_public_address_is_refused_before_anything_starts() {
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--listen", "[::]:0"],
        &["--listen", "0.0.0.0:0", "--admin-token", ""],
        &["--listen", "0.0.0.0:0", "--open-signup=false"],
    ] {
        let (ok, stderr) = serve_refused(args);
        assert!(!ok, "{args:?}");
        for words in [
            "anyone who can reach the port could create organisations",
            "--admin-token",
            "TRIGGERD_ADMIN_TOKEN",
            "--open-signup",
        ] {
            assert!(stderr.contains(words), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn open_signup_on_a_public_address_when_asked_for() {
    let server = Server::start_listening("0.0.0.0:0", &["--open-signup"]);
    server.generate("open-on-purpose", "free");
}

#[test]
fn an_admin_token_allows_a_public_address() {
    let server = Server::start_listening("0.0.0.0:0", &["--admin-token", "x"]);
    let body = r#"{"organization_name":"closed"}"#;
    let json = [("Content-Type", "application/json")];
    server.request("POST", "/api/keys/generate", &json, Some(body)).assert_error(401, "unauthorized");
    let admin = [("Content-Type", "application/json"), ("Authorization", "Bearer x")];
    assert_eq!(server.request("POST", "/api/keys/generate", &admin, Some(body)).status, 201);
}

/// Runs `triggerd serve` with `args` to completion (it must exit on its own); returns
/// whether it succeeded and its stderr.
fn serve_exits(args: &[&str]) -> (bool, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .arg("serve")
        .args(args)
        .env_remove("TRIGGERD_CONFIG")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    // A guard against a hang, never a wait for something.
    let Ok(output) = outcome.recv_timeout(Duration::from_secs(60)) else {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("serve {args:?} did not exit");
    };
    let output = output.unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_second_server_on_a_taken_port_exits_naming_the_holder() {
    // Regression: SO_REUSEPORT let a second server share the port silently, and
    // requests alternated between two servers (and two data sets).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let first = Server::start_listening(&listen, &[]);
    let (ok, stderr) = serve_exits(&["--listen", &listen, "--database-url", "host=/nonexistent dbname=none"]);
    assert!(!ok);
    assert!(stderr.contains(&format!("{listen} is already in use by process {}", first.pid())), "{stderr}");
    assert_eq!(first.request("GET", "/health", &[], None).status, 200, "the first server is untouched");
}

#[test]
fn a_second_server_on_a_data_dir_in_use_exits_naming_the_holder() {
    // Regression: two servers on one data directory shared the embedded cluster, and
    // stopping the second stopped it under the first.
    let dir = std::env::temp_dir().join(format!("triggerd-dir-{}", uuid::Uuid::now_v7().simple()));
    let data_dir = dir.to_str().unwrap();
    let pg_port = (40_000 + uuid::Uuid::now_v7().as_u128() % 20_000).to_string();
    let mut first = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-cores",
            "1",
            "--data-dir",
            data_dir,
            "--pg-port",
            &pg_port,
        ])
        .args(["--log", "warn"])
        .env_remove("DATABASE_URL")
        .env_remove("TRIGGERD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Whatever happens below, the first server (and its cluster) must not outlive the test.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        }
    }
    let _stop = Stop(first.id());
    let stdout = first.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert!(
        lines.next().is_some_and(|l| l.unwrap().starts_with("triggerd listening on")),
        "the first server starts"
    );
    let (ok, stderr) =
        serve_exits(&["--listen", "127.0.0.1:0", "--data-dir", data_dir, "--pg-port", &pg_port]);
    assert!(!ok);
    assert!(stderr.contains(&format!("is in use by process {}", first.id())), "{stderr}");
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert!(first.wait().unwrap().success(), "the first server shuts down cleanly, its cluster with it");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn database_errors_name_their_cause() {
    // Regression: a missing database printed "cannot reach PostgreSQL: db error".
    let Ok(database) = std::env::var("DATABASE_URL") else { panic!("run through scripts/test") };
    let missing = format!("{database} dbname=triggerd_no_such_database");
    let (ok, stderr) = serve_exits(&["--listen", "127.0.0.1:0", "--database-url", &missing]);
    assert!(!ok);
    assert!(stderr.contains("database \"triggerd_no_such_database\" does not exist"), "{stderr}");
    let (ok, stderr) =
        serve_exits(&["--listen", "127.0.0.1:0", "--database-url", "host=/nonexistent/socket-dir port=5"]);
    assert!(!ok);
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn an_invalid_boolean_from_the_environment_names_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--print-config"])
        .env("TRIGGERD_WEBHOOK_ALLOW_PRIVATE", "maybe")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("environment variable TRIGGERD_WEBHOOK_ALLOW_PRIVATE"), "{stderr}");
    for accepted in ["1", "0", "yes", "true"] {
        let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
            .args(["serve", "--print-config"])
            .env("TRIGGERD_WEBHOOK_ALLOW_PRIVATE", accepted)
            .output()
            .unwrap();
        assert!(output.status.success(), "{accepted}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

#[test]
fn misspelt_flags_get_a_suggestion_and_host_names_listen() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_triggerd")).args(["serve", "--lisen", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("a similar argument exists: '--listen'"));
    let (ok, printed) = triggerd(&["serve", "--listen", "localhost:8096", "--print-config"]);
    assert!(ok, "{printed}");
    let (ok, printed) = triggerd(&["serve", "--print-config"]);
    assert!(ok);
    let cores = printed.lines().find(|l| l.starts_with("http-cores = ")).unwrap();
    assert!(cores.split(' ').nth(2).unwrap().parse::<usize>().is_ok(), "the effective value: {cores}");
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--print-config"])
        .env("TRIGGERD_RETRY_SCHEDULE", "5x")
        .output()
        .unwrap();
    assert!(!output.status.success(), "an invalid value is refused after printing");
}

/// `      --name <NAME>` or `  -h, --help`; not a possible value's `- text: …`.
fn is_option_line(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("--")
        || line.as_bytes().get(1).is_some_and(u8::is_ascii_alphabetic) && line.starts_with('-')
}

/// `triggerd <args> --help`, split into (section heading, option line, its description).
fn help_sections(args: &[&str]) -> Vec<(String, String, String)> {
    let mut command: Vec<&str> = args.to_vec();
    command.push("--help");
    let (ok, help) = triggerd(&command);
    assert!(ok, "{args:?}");
    let lines: Vec<&str> = help.lines().collect();
    let mut heading = String::new();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_string();
        } else if is_option_line(line) && !heading.is_empty() {
            // Short help: the description follows on the line; long help: on the next.
            let (option, same_line) = line.trim().split_once("  ").unwrap_or((line.trim(), ""));
            let description = match same_line.trim() {
                "" => lines.get(i + 1).map_or("", |l| l.trim()),
                text => text,
            };
            found.push((heading.clone(), option.to_string(), description.to_string()));
        } else if heading == "Commands" && !line.trim().is_empty() {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            found.push((heading.clone(), name, words.collect::<Vec<_>>().join(" ")));
        }
    }
    found
}

#[test]
fn serve_options_are_grouped_under_headings() {
    let sections = help_sections(&["serve"]);
    let headings: std::collections::BTreeSet<&str> = sections.iter().map(|(h, ..)| h.as_str()).collect();
    for wanted in
        ["Network", "Cores", "Database", "Sign-up and keys", "Limits", "Webhooks", "Retention", "Logging"]
    {
        assert!(headings.contains(wanted), "no {wanted} heading: {headings:?}");
    }
    let ungrouped: Vec<&String> = sections
        .iter()
        .filter(|(h, o, _)| h == "Options" && !o.contains("--help"))
        .map(|(_, o, _)| o)
        .collect();
    assert!(ungrouped.is_empty(), "options under no heading: {ungrouped:?}");
}

#[test]
fn every_argument_of_every_command_is_described() {
    for command in [
        &[][..],
        &["serve"],
        &["check"],
        &["migrate"],
        &["local-pg"],
        &["local-pg", "start"],
        &["local-pg", "stop"],
    ] {
        let sections = help_sections(command);
        assert!(!sections.is_empty(), "{command:?}");
        for (heading, option, description) in sections {
            let bare = description.is_empty() || description.starts_with('[') || is_option_line(&description);
            assert!(!bare, "triggerd {command:?} --help: {option} under {heading} has no description");
        }
    }
}
