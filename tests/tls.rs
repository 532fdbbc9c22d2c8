//! TLS to PostgreSQL, on a private cluster of each test's own that accepts TCP
//! connections only over TLS (`local-pg start --ssl-cert-file`), with a throwaway CA
//! and server certificate made here: triggerd verifies the server as libpq's `sslmode`
//! says, the server refuses plain TCP, and a wrong root is refused by triggerd with an
//! error that says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// A CA and a server certificate it signed, for `localhost` and 127.0.0.1, as PEM
/// files in `dir`; returns (CA file, server certificate file, server key file).
fn make_certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("triggerd test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    let files = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.crt")),
        dir.join(format!("{name}-server.key")),
    );
    std::fs::write(&files.0, ca.pem()).unwrap();
    std::fs::write(&files.1, server.pem()).unwrap();
    std::fs::write(&files.2, server_key.serialize_pem()).unwrap();
    files
}

fn triggerd(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_triggerd"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TRIGGERD_CONFIG")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// A TLS-only cluster on TCP 127.0.0.1:`port`, stopped and removed when dropped.
struct TlsCluster {
    dir: PathBuf,
    port: u16,
    /// The CA that signed the server's certificate, and one that did not.
    ca: PathBuf,
    wrong_ca: PathBuf,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let dir = std::env::temp_dir().join(format!("triggerd-tls-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, certificate, key) = make_certificates(&dir, "right");
        let (wrong_ca, ..) = make_certificates(&dir, "wrong");
        // A port free on 127.0.0.1 now (a random one could be an ephemeral port in use).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = TlsCluster { dir, port, ca, wrong_ca };
        let (ok, url, stderr) = triggerd(&[
            "local-pg",
            "start",
            "--data-dir",
            cluster.dir.join("pg").to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--ssl-cert-file",
            certificate.to_str().unwrap(),
            "--ssl-key-file",
            key.to_str().unwrap(),
        ]);
        if !ok {
            let log =
                std::fs::read_to_string(cluster.dir.join("pg").join("postgres.log")).unwrap_or_default();
            panic!("local-pg start: {stderr}\npostgres.log:\n{log}");
        }
        assert!(url.contains("hostaddr=127.0.0.1") && url.contains("sslmode=require"), "{url}");
        cluster
    }

    /// URL form, TCP to localhost, with these query parameters.
    fn url(&self, parameters: &str) -> String {
        format!("postgresql://triggerd@localhost:{}/triggerd?{parameters}", self.port)
    }

    fn verify_full(&self, root: &Path) -> String {
        self.url(&format!("sslmode=verify-full&sslrootcert={}", root.display()))
    }

    /// A client on the cluster's Unix socket (trusted, no TLS), for assertions.
    fn socket_client(&self) -> postgres::Client {
        let socket = self.dir.join("pg").join("socket");
        let url = format!("host={} port={} user=triggerd dbname=triggerd", socket.display(), self.port);
        postgres::Client::connect(&url, postgres::NoTls).unwrap()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data_dir = self.dir.join("pg");
        let _ = triggerd(&[
            "local-pg",
            "stop",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--port",
            &self.port.to_string(),
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn verify_full_serves_every_connection_over_tls() {
    let cluster = TlsCluster::start();
    let server = Server::start_on(&cluster.verify_full(&cluster.ca), &[]);
    let org = server.generate("tls", "free");
    let accepted = org.post_event(&server, r#"{"type":"over.tls","payload":{"n":1}}"#);
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    let inbox = server.request("GET", "/api/inbox", &org.headers(), None);
    assert_eq!(inbox.status, 200);
    assert_eq!(inbox.json()["events"][0]["id"], id.as_str(), "{}", inbox.text());

    // Every connection triggerd holds is TCP (the cluster's pg_hba.conf admits TCP only
    // with TLS), and the server says each one is encrypted.
    let mut socket = cluster.socket_client();
    let row = socket
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL",
            &[],
        )
        .unwrap();
    let (connections, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(connections >= 4, "writers, command lanes, listener, prober: {connections}");
    assert_eq!(encrypted, connections);
    assert!(server.terminate().success());
}

#[test]
fn plain_tcp_is_refused_by_the_server_and_a_wrong_root_by_triggerd() {
    let cluster = TlsCluster::start();
    let (ok, _, stderr) = triggerd(&["migrate", "--database-url", &cluster.url("sslmode=disable")]);
    assert!(!ok);
    assert!(stderr.contains("no pg_hba.conf entry") && stderr.contains("no encryption"), "{stderr}");

    let wrong = cluster.verify_full(&cluster.wrong_ca);
    let (ok, _, stderr) = triggerd(&["serve", "--listen", "127.0.0.1:0", "--database-url", &wrong]);
    assert!(!ok);
    for words in [
        "TLS handshake with localhost failed",
        "sslmode=verify-full",
        &format!("sslrootcert={}", cluster.wrong_ca.display()),
        "UnknownIssuer",
    ] {
        assert!(stderr.contains(words), "{words:?} in {stderr}");
    }
}

#[test]
fn each_sslmode_checks_what_libpq_checks() {
    let cluster = TlsCluster::start();
    let migrate = |url: &str| triggerd(&["migrate", "--database-url", url]);
    // key=value form, reaching 127.0.0.1 under a name the certificate does not carry.
    let named = |mode: &str, root: &Path| {
        format!(
            "host=not-the-server.invalid hostaddr=127.0.0.1 port={} user=triggerd dbname=triggerd sslmode={mode} sslrootcert='{}'",
            cluster.port,
            root.display()
        )
    };
    let (ok, _, stderr) = migrate(&named("verify-full", &cluster.ca));
    assert!(!ok);
    assert!(stderr.contains("certificate not valid for name"), "verify-full checks the name: {stderr}");
    let (ok, _, stderr) = migrate(&named("verify-ca", &cluster.ca));
    assert!(ok, "verify-ca checks the chain, not the name: {stderr}");
    let (ok, _, stderr) = migrate(&named("verify-ca", &cluster.wrong_ca));
    assert!(!ok && stderr.contains("UnknownIssuer"), "{stderr}");
    let (ok, _, stderr) = migrate(&named("require", &cluster.wrong_ca));
    assert!(
        !ok && stderr.contains("UnknownIssuer"),
        "require with a root file is verify-ca, as in libpq: {stderr}"
    );
    // Only an address: it is the name checked (the certificate names 127.0.0.1 too).
    let bare = format!(
        "hostaddr=127.0.0.1 port={} user=triggerd dbname=triggerd sslmode=verify-full sslrootcert={}",
        cluster.port,
        cluster.ca.display()
    );
    let (ok, _, stderr) = migrate(&bare);
    assert!(ok, "{stderr}");
    for unverified in [cluster.url("sslmode=require"), cluster.url("sslmode=prefer"), cluster.url("")] {
        let (ok, _, stderr) = migrate(&unverified);
        assert!(ok, "{unverified}: {stderr}");
    }
}

#[test]
fn a_password_from_a_file_with_channel_binding() {
    let cluster = TlsCluster::start();
    let mut socket = cluster.socket_client();
    socket.batch_execute("CREATE ROLE tls_secret LOGIN SUPERUSER PASSWORD 'p@ss word'").unwrap();
    let hba = cluster.dir.join("pg").join("pgdata").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("hostssl all tls_secret 127.0.0.1/32 scram-sha-256\n{rules}")).unwrap();
    socket.batch_execute("SELECT pg_reload_conf()").unwrap();

    // channel_binding=require fails unless the TLS layer hands SCRAM the
    // tls-server-end-point hash (SCRAM-SHA-256-PLUS).
    let url = format!(
        "postgresql://tls_secret:p%40ss%20word@localhost:{}/triggerd?sslmode=verify-full&sslrootcert={}&channel_binding=require",
        cluster.port,
        cluster.ca.display()
    );
    let file = cluster.dir.join("database-url");
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let (ok, stdout, stderr) = triggerd(&["migrate", "--database-url-file", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("applied"), "{stdout}");
    std::fs::write(&file, url.replace("p%40ss", "wrong")).unwrap();
    let (ok, _, stderr) = triggerd(&["migrate", "--database-url-file", file.to_str().unwrap()]);
    assert!(!ok && stderr.contains("password authentication failed"), "{stderr}");
}

/// A TCP front for the suite's database (on its Unix socket) whose answer to a TLS
/// request is `S` and then bytes that are no TLS: every handshake fails, plain
/// connections are passed through. Returns its port and how many TLS requests it saw.
fn failing_tls_front() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let config: tokio_postgres::Config = common::database_url().parse().unwrap();
    let socket = match (config.get_hosts(), config.get_ports()) {
        ([tokio_postgres::config::Host::Unix(dir)], [port]) => dir.join(format!(".s.PGSQL.{port}")),
        other => panic!("the suite's DATABASE_URL is expected on a Unix socket: {other:?}"),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls_requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&tls_requests);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut first = [0u8; 8];
            if client.read_exact(&mut first).is_err() {
                continue;
            }
            // SSLRequest: length 8, code 80877103.
            if first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = client.write_all(b"Snot a TLS server hello\n");
                continue;
            }
            let Ok(mut server) = std::os::unix::net::UnixStream::connect(&socket) else { continue };
            let _ = server.write_all(&first);
            let (mut client_reader, mut server_writer) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_reader, &mut server_writer);
                let _ = server_writer.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, tls_requests)
}

#[test]
fn prefer_falls_back_to_plain_when_the_handshake_fails_and_require_does_not() {
    use std::sync::atomic::Ordering;
    let database = common::FreshDatabase::new();
    let config: tokio_postgres::Config = database.url.parse().unwrap();
    let name = config.get_dbname().unwrap().to_string();
    let (port, tls_requests) = failing_tls_front();
    let url = |mode: &str| format!("host=127.0.0.1 port={port} user=triggerd dbname={name} sslmode={mode}");
    let (ok, _, stderr) = triggerd(&["migrate", "--database-url", &url("require")]);
    assert!(!ok && stderr.contains("TLS handshake with 127.0.0.1 failed (sslmode=require"), "{stderr}");
    assert_eq!(tls_requests.load(Ordering::SeqCst), 1);
    let (ok, stdout, stderr) = triggerd(&["migrate", "--database-url", &url("prefer")]);
    assert!(ok, "prefer goes on without TLS, as libpq does: {stderr}");
    assert!(stdout.contains("applied") && stderr.contains("sslmode=prefer connects without it"), "{stderr}");
    assert_eq!(tls_requests.load(Ordering::SeqCst), 2, "one TLS attempt, then plain");
}
