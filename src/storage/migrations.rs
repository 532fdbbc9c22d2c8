//! Plain SQL migrations embedded in the binary, applied at start-up in order inside one
//! transaction, recorded in `schema_migrations` with the SHA-256 of their SQL. An
//! advisory lock serialises servers that start at the same time on one database.
//!
//! Before applying anything, the record is checked against the binary: a migration
//! whose recorded checksum differs from the binary's (its SQL was edited after it ran
//! somewhere) and a version the binary does not know (the schema is newer than the
//! binary) refuse the start, naming the versions. Rows recorded before checksums
//! existed get the binary's checksum on the first run that finds them.

use std::fmt::Write as _;
use std::time::Instant;

use sha2::Digest as _;
use tokio_postgres::Client;

/// (version, name, SQL), in order. Append only; never edit an applied migration (its
/// checksum would no longer match, and every server would refuse to start).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "inbox_indexes", include_str!("migrations/0002_inbox_indexes.sql")),
    (3, "deliveries", include_str!("migrations/0003_deliveries.sql")),
    (4, "partition_events", include_str!("migrations/0004_partition_events.sql")),
    (5, "acked_leave_schedule", include_str!("migrations/0005_acked_leave_schedule.sql")),
    (6, "consumer_leases", include_str!("migrations/0006_consumer_leases.sql")),
    (7, "stream_order", include_str!("migrations/0007_stream_order.sql")),
    (8, "delivery_control", include_str!("migrations/0008_delivery_control.sql")),
    (9, "rate_budgets", include_str!("migrations/0009_rate_budgets.sql")),
    (10, "leaseable_by_age", include_str!("migrations/0010_leaseable_by_age.sql")),
];

/// Arbitrary constant naming triggerd's migration lock.
const MIGRATION_LOCK_ID: i64 = 0x7472_6967_6765_7264;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{}", crate::util::error_chain(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "applied migration(s) differ from this binary's: {0}. An applied migration's SQL must never change; \
         run the binary that applied it, or restore the migration's original text"
    )]
    ChecksumMismatch(String),
    #[error(
        "the database has migration(s) {versions} that this binary does not know (it knows 1 to {known_max}): \
         the schema is newer than this binary; run a triggerd that has them"
    )]
    SchemaNewer { versions: String, known_max: i32 },
}

/// The SHA-256 of a migration's SQL, in hex: what `schema_migrations.checksum` holds.
pub fn checksum(sql: &str) -> String {
    sha2::Sha256::digest(sql.as_bytes()).iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// Where one migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Applied,
    /// Applied before checksums were recorded; the next `migrate` records it.
    AppliedWithoutChecksum,
    /// Applied with this other checksum: the start is refused.
    ChecksumDiffers {
        recorded: String,
    },
    Pending,
    /// In the database, not in this binary: the start is refused.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub version: i32,
    pub name: String,
    pub state: State,
    /// The binary's checksum (the recorded one for `Unknown`, if any).
    pub checksum: String,
    /// RFC 3339 UTC, when applied.
    pub applied_at: Option<String>,
}

/// What the database records, by version: (name, checksum if recorded, applied at).
type Recorded = Vec<(i32, String, Option<String>, String)>;

async fn recorded(client: &impl tokio_postgres::GenericClient) -> Result<Recorded, tokio_postgres::Error> {
    let exists: bool =
        client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(Vec::new());
    }
    // to_jsonb: a table made before the checksum column existed reads as NULL checksums.
    let rows = client
        .query(
            "SELECT version, name, to_jsonb(m) ->> 'checksum',
                    to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM schema_migrations m ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2), row.get(3))).collect())
}

/// Every migration the binary or the database knows, in version order.
pub async fn status(client: &Client) -> Result<Vec<Status>, tokio_postgres::Error> {
    Ok(compare(&recorded(client).await?))
}

fn compare(recorded: &Recorded) -> Vec<Status> {
    let mut statuses: Vec<Status> = MIGRATIONS
        .iter()
        .map(|(version, name, sql)| {
            let checksum = checksum(sql);
            let found = recorded.iter().find(|(v, ..)| v == version);
            let state = match found.map(|(_, _, recorded, _)| recorded) {
                None => State::Pending,
                Some(None) => State::AppliedWithoutChecksum,
                Some(Some(recorded)) if *recorded == checksum => State::Applied,
                Some(Some(recorded)) => State::ChecksumDiffers { recorded: recorded.clone() },
            };
            let applied_at = found.map(|(.., at)| at.clone());
            Status { version: *version, name: name.to_string(), state, checksum, applied_at }
        })
        .collect();
    for (version, name, recorded, at) in recorded {
        if !MIGRATIONS.iter().any(|(v, ..)| v == version) {
            statuses.push(Status {
                version: *version,
                name: name.clone(),
                state: State::Unknown,
                checksum: recorded.clone().unwrap_or_default(),
                applied_at: Some(at.clone()),
            });
        }
    }
    statuses.sort_by_key(|s| s.version);
    statuses
}

/// Refuses a database this binary must not touch: an edited migration or a newer schema.
fn refuse_incompatible(statuses: &[Status]) -> Result<(), MigrateError> {
    let unknown: Vec<String> = statuses
        .iter()
        .filter(|s| s.state == State::Unknown)
        .map(|s| format!("{} ({})", s.version, s.name))
        .collect();
    if !unknown.is_empty() {
        let known_max = MIGRATIONS.iter().map(|(v, ..)| *v).max().unwrap_or(0);
        return Err(MigrateError::SchemaNewer { versions: unknown.join(", "), known_max });
    }
    let differing: Vec<String> = statuses
        .iter()
        .filter_map(|s| match &s.state {
            State::ChecksumDiffers { recorded } => Some(format!(
                "migration {} ({}) was applied with checksum {recorded}, this binary's is {}",
                s.version, s.name, s.checksum
            )),
            _ => None,
        })
        .collect();
    if differing.is_empty() {
        Ok(())
    } else {
        Err(MigrateError::ChecksumMismatch(differing.join("; ")))
    }
}

/// Applies every migration not yet recorded, after checking the recorded ones. Logs
/// each migration as it starts and with its duration when done. Returns how many were
/// applied.
pub async fn migrate(client: &mut Client) -> Result<usize, MigrateError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_ID]).await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text",
        )
        .await?;
    let statuses = compare(&recorded(&transaction).await?);
    refuse_incompatible(&statuses)?;
    let mut count = 0;
    for status in &statuses {
        let (version, name) = (status.version, status.name.as_str());
        match status.state {
            State::AppliedWithoutChecksum => {
                transaction
                    .execute(
                        "UPDATE schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL",
                        &[&version, &status.checksum],
                    )
                    .await?;
                tracing::info!(version, name, checksum = %status.checksum, "recorded the checksum of an earlier migration");
            }
            State::Pending => {
                let sql = MIGRATIONS.iter().find(|(v, ..)| *v == version).map_or("", |(.., sql)| *sql);
                tracing::info!(version, name, "applying migration");
                let started = Instant::now();
                transaction.batch_execute(sql).await?;
                transaction
                    .execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        &[&version, &name, &status.checksum],
                    )
                    .await?;
                let duration_ms = started.elapsed().as_millis() as u64;
                tracing::info!(version, name, duration_ms, "applied migration");
                count += 1;
            }
            State::Applied | State::ChecksumDiffers { .. } | State::Unknown => {}
        }
    }
    transaction.commit().await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(version: i32, checksum: Option<&str>) -> (i32, String, Option<String>, String) {
        (version, format!("m{version}"), checksum.map(str::to_string), "2024-01-01T00:00:00Z".into())
    }

    #[test]
    fn versions_are_in_order_and_checksums_are_sha256() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(checksum(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn an_edited_migration_and_a_newer_schema_are_refused_by_version() {
        let good = checksum(MIGRATIONS[0].2);
        let statuses = compare(&vec![applied(1, Some(&good)), applied(2, None)]);
        assert_eq!(statuses[0].state, State::Applied);
        assert_eq!(statuses[1].state, State::AppliedWithoutChecksum);
        assert!(statuses[2..].iter().all(|s| s.state == State::Pending));
        assert!(refuse_incompatible(&statuses).is_ok());

        let edited = compare(&vec![applied(1, Some(&good)), applied(2, Some("abc"))]);
        let refused = refuse_incompatible(&edited).unwrap_err().to_string();
        assert!(refused.contains("migration 2 (inbox_indexes) was applied with checksum abc"), "{refused}");

        let newer = compare(&vec![applied(1, Some(&good)), applied(9999, Some("x"))]);
        let refused = refuse_incompatible(&newer).unwrap_err().to_string();
        assert!(refused.contains("9999 (m9999)") && refused.contains("newer than this binary"), "{refused}");
    }
}
