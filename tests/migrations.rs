//! Migrations that protect data: each applied migration's SHA-256 is recorded and
//! checked at every start; an edited migration or a schema newer than the binary is
//! refused, naming the versions; rows from before checksums are filled in;
//! `migrate --status` lists where each stands; `migrate` logs each migration with its
//! duration; `check` and `migrate` read the `--config` file like `serve`.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{FreshDatabase, Server};
use triggerd::storage::migrations::checksum;

/// Runs triggerd to its exit (with a guard against a hang); (success, stdout, stderr).
fn triggerd(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TRIGGERD_CONFIG")
        .stdout(Stdio::piped())
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
        panic!("triggerd {args:?} did not exit");
    };
    let output = output.unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// The migrations in the source tree: version → SHA-256 of the file.
fn expected_checksums() -> BTreeMap<i32, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage/migrations");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let version: i32 = name[..4].parse().unwrap();
            (version, checksum(&std::fs::read_to_string(&path).unwrap()))
        })
        .collect()
}

fn recorded_checksums(url: &str) -> BTreeMap<i32, Option<String>> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let rows = client.query("SELECT version, checksum FROM schema_migrations", &[]).unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

fn execute(url: &str, sql: &str) {
    postgres::Client::connect(url, postgres::NoTls).unwrap().batch_execute(sql).unwrap();
}

#[test]
fn migrate_records_each_checksum_and_logs_each_migration_with_its_duration() {
    let database = FreshDatabase::new();
    let expected = expected_checksums();
    let (ok, stdout, stderr) = triggerd(&["migrate", "--database-url", &database.url]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("applied {} migration(s)", expected.len())), "{stdout}");
    for version in expected.keys() {
        assert!(stderr.contains(&format!("applying migration version={version} ")), "{stderr}");
        let done = format!("applied migration version={version} ");
        let line = stderr.lines().find(|l| l.contains(&done)).unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains("duration_ms="), "{line}");
    }
    let recorded = recorded_checksums(&database.url);
    assert_eq!(recorded, expected.iter().map(|(v, c)| (*v, Some(c.clone()))).collect());

    let (ok, status, stderr) = triggerd(&["migrate", "--status", "--database-url", &database.url]);
    assert!(ok, "{stderr}");
    for (version, checksum) in &expected {
        let line = status.lines().find(|l| l.trim_start().starts_with(&format!("{version} "))).unwrap();
        assert!(line.contains(" applied ") && line.ends_with(checksum.as_str()), "{line}");
    }
    let (ok, stdout, _) = triggerd(&["migrate", "--database-url", &database.url]);
    assert!(ok && stdout.contains("applied 0 migration(s)"), "{stdout}");
}

#[test]
fn a_fresh_database_lists_every_migration_as_pending() {
    let database = FreshDatabase::new();
    let (ok, status, stderr) = triggerd(&["migrate", "--status", "--database-url", &database.url]);
    assert!(ok, "{stderr}");
    for (version, checksum) in expected_checksums() {
        let line = status.lines().find(|l| l.trim_start().starts_with(&format!("{version} "))).unwrap();
        assert!(line.contains(" pending ") && line.ends_with(checksum.as_str()), "{line}");
    }
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    let made: bool =
        client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]).unwrap().get(0);
    assert!(!made, "--status changes nothing");
}

#[test]
fn an_edited_migration_refuses_the_start_naming_it() {
    let database = FreshDatabase::new();
    assert!(triggerd(&["migrate", "--database-url", &database.url]).0);
    let zeros = "0".repeat(64);
    execute(&database.url, &format!("UPDATE schema_migrations SET checksum = '{zeros}' WHERE version = 3"));
    let ours = &expected_checksums()[&3];
    let named =
        format!("migration 3 (deliveries) was applied with checksum {zeros}, this binary's is {ours}");

    let (ok, _, stderr) = triggerd(&["serve", "--listen", "127.0.0.1:0", "--database-url", &database.url]);
    assert!(!ok);
    assert!(stderr.contains(&named), "{stderr}");
    let (ok, _, stderr) = triggerd(&["migrate", "--database-url", &database.url]);
    assert!(!ok && stderr.contains(&named), "{stderr}");
    let (ok, status, stderr) = triggerd(&["migrate", "--status", "--database-url", &database.url]);
    assert!(!ok, "--status exits 1 when the database would be refused");
    assert!(stderr.contains("migration 3 differs"), "{stderr}");
    assert!(status.lines().any(|l| l.contains("CHECKSUM DIFFERS") && l.ends_with(ours.as_str())), "{status}");
    assert!(status.lines().any(|l| l.contains("(recorded)") && l.ends_with(&zeros)), "{status}");
}

#[test]
fn a_schema_newer_than_the_binary_refuses_the_start_naming_the_versions() {
    let database = FreshDatabase::new();
    assert!(triggerd(&["migrate", "--database-url", &database.url]).0);
    execute(
        &database.url,
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9998, 'from_the_future', 'a'), (9999, 'and_beyond', NULL)",
    );
    let (ok, _, stderr) = triggerd(&["serve", "--listen", "127.0.0.1:0", "--database-url", &database.url]);
    assert!(!ok);
    for words in ["9998 (from_the_future), 9999 (and_beyond)", "newer than this binary"] {
        assert!(stderr.contains(words), "{words:?} in {stderr}");
    }
    let (ok, status, _) = triggerd(&["migrate", "--status", "--database-url", &database.url]);
    assert!(!ok);
    assert!(
        status.lines().any(|l| l.contains("from_the_future") && l.contains("UNKNOWN TO THIS BINARY")),
        "{status}"
    );
}

#[test]
fn rows_from_before_checksums_get_them_on_the_first_start() {
    let database = FreshDatabase::new();
    assert!(triggerd(&["migrate", "--database-url", &database.url]).0);
    // What a binary from before checksums leaves behind.
    execute(&database.url, "ALTER TABLE schema_migrations DROP COLUMN checksum");
    let (ok, status, _) = triggerd(&["migrate", "--status", "--database-url", &database.url]);
    assert!(ok);
    assert!(status.lines().filter(|l| l.contains("applied, no checksum")).count() >= 6, "{status}");

    let server = Server::start_on(&database.url, &[]);
    assert!(server.terminate().success());
    let expected = expected_checksums();
    assert_eq!(
        recorded_checksums(&database.url),
        expected.iter().map(|(v, c)| (*v, Some(c.clone()))).collect()
    );
}

#[test]
fn check_and_migrate_read_the_config_file() {
    let database = FreshDatabase::new();
    let dir = std::env::temp_dir().join(format!("triggerd-migrate-config-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("triggerd.conf");
    // A serve configuration: options migrate and check do not have are accepted.
    std::fs::write(
        &file,
        format!("database-url = {}\nhttp-cores = 3\nlisten = 0.0.0.0:9000\n", database.url),
    )
    .unwrap();
    let (ok, stdout, stderr) = triggerd(&["migrate", "--config", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("applied"), "{stdout}");
    let (_, report, _) = triggerd(&["check", "--config", file.to_str().unwrap()]);
    assert!(report.contains("(needs 768 KiB)"), "3 HTTP cores from the file: {report}");
    let (_, report, _) = triggerd(&["check", "--config", file.to_str().unwrap(), "--http-cores", "2"]);
    assert!(report.contains("(needs 512 KiB)"), "a flag wins over the file: {report}");
    std::fs::write(&file, "colour = blue\n").unwrap();
    let (ok, _, stderr) = triggerd(&["migrate", "--config", file.to_str().unwrap()]);
    assert!(!ok && stderr.contains("unknown option \"colour\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
