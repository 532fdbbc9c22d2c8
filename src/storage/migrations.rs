//! Plain SQL migrations embedded in the binary, applied at start-up in order inside one
//! transaction, recorded in `schema_migrations`. An advisory lock serialises servers
//! that start at the same time on one database.

use tokio_postgres::Client;

/// (version, name, SQL), in order. Append only; never edit an applied migration.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "inbox_indexes", include_str!("migrations/0002_inbox_indexes.sql")),
    (3, "deliveries", include_str!("migrations/0003_deliveries.sql")),
    (4, "partition_events", include_str!("migrations/0004_partition_events.sql")),
    (5, "acked_leave_schedule", include_str!("migrations/0005_acked_leave_schedule.sql")),
    (6, "consumer_leases", include_str!("migrations/0006_consumer_leases.sql")),
    (9, "rate_budgets", include_str!("migrations/0009_rate_budgets.sql")),
];

/// Arbitrary constant naming triggerd's migration lock.
const MIGRATION_LOCK_ID: i64 = 0x7472_6967_6765_7264;

/// Applies every migration not yet recorded. Returns how many were applied.
pub async fn migrate(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_ID]).await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let applied: Vec<i32> = transaction
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        transaction.batch_execute(sql).await?;
        transaction
            .execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .await?;
        tracing::info!(version, name, "applied migration");
        count += 1;
    }
    transaction.commit().await?;
    Ok(count)
}
