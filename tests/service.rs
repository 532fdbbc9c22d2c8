//! Running under systemd: `Type=notify` readiness (`READY=1` once listening),
//! `STOPPING=1` at shutdown and watchdog pings, on a real notification socket (a path
//! and an abstract name); secrets read from files, as `LoadCredential=` provides them.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{database_url, Conn, TEST_ARGON2_MEMORY_KIB};

/// Guard against a hung test, never used to wait for something to happen.
const GUARD: Duration = Duration::from_secs(30);

/// `triggerd serve` on `listen` with `args` and `env`, DATABASE_URL unset unless
/// passed; returns the child and the address of its listening line.
fn serve(listen: &str, args: &[&str], env: &[(&str, &str)]) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--listen", listen, "--http-cores", "2", "--log", "warn"])
        .args(["--argon2-memory-kib", TEST_ARGON2_MEMORY_KIB])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TRIGGERD_CONFIG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a listening line").unwrap();
    let address = line.strip_prefix("triggerd listening on http://").expect(&line).parse().unwrap();
    std::thread::spawn(move || for _ in lines {});
    (child, address)
}

fn terminate(mut child: Child) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).expect("a notification before the guard runs out");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn ready_after_listening_watchdog_pings_and_stopping_at_shutdown() {
    let path = std::env::temp_dir().join(format!("triggerd-notify-{}", uuid::Uuid::now_v7().simple()));
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(GUARD)).unwrap();
    let database = database_url();
    // A 200 ms watchdog: pings every 100 ms.
    let env = [("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
    let (child, address) = serve("127.0.0.1:0", &["--database-url", &database], &env);
    let ready = receive(&socket);
    assert_eq!(ready, format!("READY=1\nSTATUS=listening on http://{address}"));
    for _ in 0..3 {
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }
    assert_eq!(Conn::new(address).request("GET", "/health", &[], None).status, 200);
    terminate(child);
    let after: Vec<String> = std::iter::from_fn(|| {
        let mut buffer = [0u8; 4096];
        socket.set_nonblocking(true).unwrap();
        socket.recv(&mut buffer).ok().map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
    })
    .collect();
    assert_eq!(after.iter().filter(|m| *m != "WATCHDOG=1").collect::<Vec<_>>(), ["STOPPING=1"], "{after:?}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_abstract_notify_socket_without_a_watchdog() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("triggerd-test-{}", uuid::Uuid::now_v7().simple());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&address).unwrap();
    socket.set_read_timeout(Some(GUARD)).unwrap();
    let database = database_url();
    let (child, _) =
        serve("127.0.0.1:0", &["--database-url", &database], &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert!(receive(&socket).starts_with("READY=1\n"));
    terminate(child);
    assert_eq!(receive(&socket), "STOPPING=1", "no watchdog pings without WATCHDOG_USEC");
}

#[test]
fn the_admin_token_and_database_url_from_files() {
    let dir = std::env::temp_dir().join(format!("triggerd-credentials-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token_file, url_file) = (dir.join("admin-token"), dir.join("database-url"));
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    std::fs::write(&url_file, format!("{}\n", database_url())).unwrap();
    let (token, url) = (token_file.to_str().unwrap(), url_file.to_str().unwrap());
    // A public address needs an admin token: the one from the file counts.
    let (child, address) =
        serve("0.0.0.0:0", &["--admin-token-file", token, "--database-url-file", url], &[]);
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], address.port()));
    let body = r#"{"organization_name":"from-a-file"}"#;
    let json = [("Content-Type", "application/json")];
    let refused = Conn::new(address).request("POST", "/api/keys/generate", &json, Some(body));
    refused.assert_error(401, "unauthorized");
    let admin = [("Content-Type", "application/json"), ("Authorization", "Bearer s3cret-token")];
    assert_eq!(Conn::new(address).request("POST", "/api/keys/generate", &admin, Some(body)).status, 201);
    terminate(child);

    std::fs::write(&token_file, "\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--admin-token-file", token, "--database-url-file", url])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-token-file") && stderr.contains("the file is empty"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--admin-token", "x", "--admin-token-file", token, "--print-config"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "one or the other");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be used with"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_packaged_unit_and_settings_file_work_with_this_binary() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("tuning/triggerd.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "LoadCredential=admin-token:/etc/triggerd/admin-token",
        "LoadCredential=database-url:/etc/triggerd/database-url",
        "ExecStart=/usr/bin/triggerd serve --config /etc/triggerd/triggerd.conf",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // The unit's environment, with %d (the credentials directory) made real.
    let credentials = std::env::temp_dir().join(format!("triggerd-unit-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("admin-token"), "t0ken\n").unwrap();
    std::fs::write(credentials.join("database-url"), format!("{}\n", database_url())).unwrap();
    let environment: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%d", credentials.to_str().unwrap())))
        .collect();
    assert!(environment.iter().any(|(k, _)| k == "TRIGGERD_ADMIN_TOKEN_FILE"), "{environment:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(["serve", "--config", root.join("tuning/triggerd.conf").to_str().unwrap(), "--print-config"])
        .env_remove("DATABASE_URL")
        .env_remove("TRIGGERD_CONFIG")
        .envs(environment)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("listen = 0.0.0.0:8080  # file"), "{printed}");
    assert!(printed.contains("admin-token = (read from --admin-token-file)"), "{printed}");

    // Every file the package installs is in the tree (the binary is built by cargo deb).
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deb = manifest.split("[package.metadata.deb]").nth(1).unwrap().split("\n[").next().unwrap();
    let sources: Vec<&str> = deb
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(sources.len() >= 4, "{sources:?}");
    for source in sources.iter().filter(|s| !s.starts_with("target/")) {
        assert!(root.join(source).is_file(), "the package installs {source}, which does not exist");
    }
    for script in ["debian/postinst", "debian/postrm"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(root.join(script)).unwrap().permissions(),
        );
        assert!(mode & 0o111 != 0, "{script} is executable");
    }
    let _ = std::fs::remove_dir_all(&credentials);
}
