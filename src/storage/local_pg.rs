//! The embedded default database: a private PostgreSQL cluster that triggerd
//! initialises and starts itself from the installed server binaries (`initdb`,
//! `pg_ctl`, found on `PATH` or under `/usr/lib/postgresql/*/bin`).
//!
//! The cluster listens only on a Unix socket inside its own directory, trusts local
//! connections (nothing else can reach it), and is reused on the next start. When
//! triggerd runs as root, the cluster runs as the `postgres` user (or `nobody`), since
//! PostgreSQL refuses to run as root.
//!
//! With a server certificate (`with_tls`), it also listens on TCP 127.0.0.1 (Unix
//! sockets carry no TLS) and accepts TCP connections only over TLS (`hostssl` in
//! `pg_hba.conf`, no `host` line): a cluster to test TLS clients against.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The role and database the cluster is created with.
pub const DATABASE: &str = "triggerd";
/// Longest Unix socket path the kernel accepts is 107 bytes; PostgreSQL appends
/// `/.s.PGSQL.<port>` (up to 17 more).
const SOCKET_DIR_BYTES_MAX: usize = 90;

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under /usr/lib/postgresql/*/bin; \
         install them (Debian: apt-get install postgresql) or set DATABASE_URL"
    )]
    NotInstalled,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{command} failed ({status}); see {log}")]
    Failed { command: String, status: String, log: String },
    #[error("{0}")]
    Setup(String),
    #[error("{command} was interrupted (signal {signal}); run the same command again to start over")]
    Interrupted { command: String, signal: i32 },
}

/// A cluster under `root`: data in `root/pgdata`, socket in `root/socket` (or a
/// short path under /tmp when that would be too long), log in `root/postgres.log`.
pub struct LocalPg {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    /// Server certificate chain and key (PEM files) when TCP with TLS is wanted.
    tls: Option<(PathBuf, PathBuf)>,
}

/// `pg_hba.conf` of a TLS cluster: the socket is trusted as before; TCP from loopback
/// only with TLS; anything else has no entry and is refused.
const TLS_HBA: &str = "local   all all              trust\n\
                       hostssl all all 127.0.0.1/32 trust\n\
                       hostssl all all ::1/128      trust\n";

impl LocalPg {
    pub fn new(root: &Path, port: u16) -> Result<LocalPg, LocalPgError> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let bin_dir = find_bin_dir().ok_or(LocalPgError::NotInstalled)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 { Some(unprivileged_user()?) } else { None };
        Ok(LocalPg { root, bin_dir, port, run_as, tls: None })
    }

    /// Serves TLS on TCP 127.0.0.1 with this certificate chain and key (PEM), refusing
    /// TCP connections without TLS. The files are copied into the cluster's directory
    /// (the key readable by its owner only, as PostgreSQL demands).
    pub fn with_tls(mut self, certificate: &Path, key: &Path) -> LocalPg {
        self.tls = Some((certificate.to_path_buf(), key.to_path_buf()));
        self
    }

    /// Copies the certificate and key in and writes the `hostssl`-only `pg_hba.conf`;
    /// returns the server's extra options.
    fn prepare_tls(&self, certificate: &Path, key: &Path) -> Result<String, LocalPgError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.root.join("tls");
        std::fs::create_dir_all(&dir)?;
        self.chown(&dir)?;
        let (certificate_copy, key_copy) = (dir.join("server.crt"), dir.join("server.key"));
        for (from, to, mode) in [(certificate, &certificate_copy, 0o644), (key, &key_copy, 0o600)] {
            std::fs::copy(from, to).map_err(|e| LocalPgError::Setup(format!("{}: {e}", from.display())))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
            self.chown(to)?;
        }
        let hba = self.data_dir().join("pg_hba.conf");
        std::fs::write(&hba, TLS_HBA)?;
        self.chown(&hba)?;
        Ok(format!(
            " -c listen_addresses='127.0.0.1' -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
            certificate_copy.display(),
            key_copy.display()
        ))
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    pub fn socket_dir(&self) -> PathBuf {
        let preferred = self.root.join("socket");
        if preferred.as_os_str().len() <= SOCKET_DIR_BYTES_MAX {
            preferred
        } else {
            std::env::temp_dir().join(format!("triggerd-pg-{}", self.port))
        }
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Connection string for the cluster (libpq key=value form): its socket, or with
    /// TLS its TCP address (add `sslmode=verify-full sslrootcert=<the CA>` to verify).
    pub fn database_url(&self) -> String {
        match self.tls {
            None => format!(
                "host={} port={} user={DATABASE} dbname={DATABASE}",
                self.socket_dir().display(),
                self.port
            ),
            Some(_) => format!(
                "host=localhost hostaddr=127.0.0.1 port={} user={DATABASE} dbname={DATABASE} sslmode=require",
                self.port
            ),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.env("LC_ALL", "C").env("LANG", "C").current_dir(&self.root);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command
    }

    fn run(&self, mut command: Command, what: &str) -> Result<(), LocalPgError> {
        let output = command.output()?;
        let error_file = self.root.join(format!("{what}.err"));
        if output.status.success() {
            // A failure of an earlier attempt is history now.
            let _ = std::fs::remove_file(&error_file);
            return Ok(());
        }
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&output.status) {
            return Err(LocalPgError::Interrupted { command: what.into(), signal });
        }
        let log = self.log_file();
        std::fs::write(&error_file, [&output.stdout[..], &output.stderr[..]].concat())?;
        Err(LocalPgError::Failed {
            command: what.into(),
            status: output.status.to_string(),
            log: format!("{} and {}", error_file.display(), log.display()),
        })
    }

    fn chown(&self, path: &Path) -> Result<(), LocalPgError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        let mut status = self.command("pg_ctl");
        status.arg("status").arg("-D").arg(self.data_dir());
        status.output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// Initialises the cluster if needed and starts it unless it already runs; `true`
    /// when this call started it.
    pub fn start(&self) -> Result<bool, LocalPgError> {
        self.chown(&self.root)?;
        let socket_dir = self.socket_dir();
        std::fs::create_dir_all(&socket_dir)?;
        self.chown(&socket_dir)?;
        if !self.data_dir().join("PG_VERSION").exists() {
            let mut initdb = self.command("initdb");
            initdb.arg("-D").arg(self.data_dir()).args([
                "-U",
                DATABASE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]);
            if let Err(error) = self.run(initdb, "initdb") {
                // A half-made cluster would be mistaken for a made one next time.
                let _ = std::fs::remove_dir_all(self.data_dir());
                return Err(self.explain_permissions(error));
            }
        }
        if self.is_running() {
            return Ok(false);
        }
        let tls_options = match &self.tls {
            Some((certificate, key)) => self.prepare_tls(certificate, key)?,
            None => String::new(),
        };
        let mut options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c port={} -c max_connections=200 \
             -c shared_buffers=256MB -c wal_buffers=16MB -c max_wal_size=4GB -c checkpoint_timeout=15min \
             -c synchronous_commit=on -c fsync=on",
            socket_dir.display(),
            self.port
        );
        options.push_str(&tls_options);
        let mut start = self.command("pg_ctl");
        start.arg("start").arg("-w").arg("-t").arg("60").arg("-D").arg(self.data_dir());
        start.arg("-l").arg(self.log_file()).arg("-o").arg(options);
        self.run(start, "pg_ctl-start").map(|()| true)
    }

    pub fn stop(&self) -> Result<(), LocalPgError> {
        if !self.data_dir().join("PG_VERSION").exists() || !self.is_running() {
            return Ok(());
        }
        let mut stop = self.command("pg_ctl");
        stop.arg("stop").arg("-w").arg("-m").arg("fast").arg("-D").arg(self.data_dir());
        self.run(stop, "pg_ctl-stop")
    }

    fn explain_permissions(&self, error: LocalPgError) -> LocalPgError {
        let denied = std::fs::read_to_string(self.root.join("initdb.err"))
            .is_ok_and(|text| text.contains("ermission denied"));
        match self.run_as {
            Some(_) if denied && matches!(error, LocalPgError::Failed { .. }) => LocalPgError::Setup(format!(
                "{error}. PostgreSQL runs as an unprivileged user when triggerd runs as root: every parent of {} \
                 must be searchable by that user (or choose a --data-dir under /tmp or /var/lib)",
                self.root.display()
            )),
            _ => error,
        }
    }

    /// Creates the `triggerd` database if the cluster does not have it yet.
    pub async fn ensure_database(&self) -> Result<(), LocalPgError> {
        let url = format!(
            "host={} port={} user={DATABASE} dbname=postgres",
            self.socket_dir().display(),
            self.port
        );
        let target = super::pg::Target::parse(&url).map_err(LocalPgError::Setup)?;
        let (client, connection) =
            target.connect().await.map_err(|e| LocalPgError::Setup(crate::util::error_chain(&e)))?;
        let driver = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .map_err(|e| LocalPgError::Setup(e.to_string()))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
                .map_err(|e| LocalPgError::Setup(e.to_string()))?;
        }
        drop(client);
        let _ = driver.await;
        Ok(())
    }
}

/// `initdb`'s directory: on `PATH`, else the newest `/usr/lib/postgresql/<v>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if let Some(dir) = on_path {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn unprivileged_user() -> Result<(u32, u32), LocalPgError> {
    for name in ["postgres", "nobody"] {
        let Ok(c_name) = CString::new(name) else { continue };
        // SAFETY: getpwnam gets a valid NUL-terminated string; the returned record is
        // only read before any other getpw* call on this thread.
        let record = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if !record.is_null() {
            // SAFETY: checked non-null above; points at libc's static passwd record.
            let (uid, gid) = unsafe { ((*record).pw_uid, (*record).pw_gid) };
            return Ok((uid, gid));
        }
    }
    Err(LocalPgError::Setup(
        "running as root, but neither a postgres nor a nobody user exists to run PostgreSQL".into(),
    ))
}
