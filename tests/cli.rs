//! The command line: every `serve` option is documented with its environment
//! variable, and `triggerd check` reports on this host.

use std::process::Command;

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
    assert!(report.lines().all(|l| l.starts_with("ok ") || l.starts_with("warn ") || l.starts_with("FAIL ")), "{report}");
    assert!(report.contains("io_uring"));
    assert!(report.contains("memlock"));
    assert_eq!(runnable, !report.contains("FAIL"), "exit status follows the failures");
}
