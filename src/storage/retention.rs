//! Partition maintenance and retention, run by the storage core at start-up and then
//! every `interval`. Everything takes `now` (µs since the epoch), so tests drive it
//! with an injected clock.
//!
//! - Daily partitions of `events` (by id range: a UUIDv7 begins with its time) are
//!   created `ahead_days` ahead, so an insert never lacks one.
//! - A partition whose whole day is older than the retention is detached
//!   `CONCURRENTLY` (no lock that blocks ingest) and dropped, if every event in it is
//!   delivered. One with undelivered events is kept (and reported) until they are:
//!   dropping it would lose events nobody has received. Kept, but not forever: once
//!   its day is older than the undelivered retention (the ceiling), it is dropped with
//!   its undelivered events, which are counted first (`Report::undelivered_dropped`).
//! - Dedup claims older than the 24 h window (plus an hour) are deleted, in bounded
//!   batches.

use std::time::Duration;

use tokio_postgres::Client;
use uuid::Uuid;

use crate::util::time::{civil_from_days, days_from_civil};

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Dedup claims (or attempt log rows) deleted per statement.
const DEDUP_DELETE_BATCH: i64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Delivered events are kept at least this many days.
    pub retention_days: u32,
    /// Undelivered events are kept at most this many days (whole days past it are
    /// dropped whatever their events' status); 0: no ceiling, kept until delivered.
    /// Never below `retention_days` (the configuration refuses it).
    pub undelivered_retention_days: u32,
    /// Daily partitions created ahead of today.
    pub ahead_days: u32,
    pub interval: Duration,
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Old partitions kept because some of their events are not delivered.
    pub kept: Vec<String>,
    /// Partitions past the undelivered retention dropped with undelivered events in
    /// them (also listed in `dropped`), with how many.
    pub undelivered_dropped: Vec<(String, u64)>,
    pub dedup_claims_deleted: u64,
    pub consumer_leases_deleted: u64,
    /// Attempt log rows of events in dropped partitions.
    pub attempts_deleted: u64,
}

pub fn partition_name(day: i64) -> String {
    let (year, month, day_of_month) = civil_from_days(day);
    format!("events_p{year:04}{month:02}{day_of_month:02}")
}

/// The day number of a partition name made by `partition_name`.
fn day_of(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("events_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, month, day_of_month): (i64, u32, u32) =
        (digits[0..4].parse().ok()?, digits[4..6].parse().ok()?, digits[6..8].parse().ok()?);
    Some(days_from_civil(year, month, day_of_month))
}

/// The smallest UUIDv7 of the start of `day`: the partition bound.
pub fn uuid_at_day(day: i64) -> Uuid {
    crate::util::ids::uuid_at_millis((day * MICROS_PER_DAY / 1000) as u64)
}

/// One maintenance pass at `now_micros`: partitions made ahead, old ones dropped,
/// expired dedup claims deleted.
pub async fn maintain(
    client: &Client,
    now_micros: i64,
    config: &RetentionConfig,
) -> Result<Report, tokio_postgres::Error> {
    let today = now_micros.div_euclid(MICROS_PER_DAY);
    let mut report = Report::default();
    let existing: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    create_ahead(client, today, config.ahead_days, &existing, &mut report).await?;
    let horizons = Horizons::at(today, config);
    drop_expired(client, horizons, &existing, &mut report).await?;
    report.dedup_claims_deleted = delete_expired_claims(client, now_micros).await?;
    let oldest_kept_day =
        existing.iter().filter(|name| !report.dropped.contains(name)).filter_map(|name| day_of(name)).min();
    if let Some(day) = oldest_kept_day {
        report.attempts_deleted = delete_attempts_before(client, uuid_at_day(day)).await?;
    }
    // A lease's row only matters while it lives (acks and releases check it); a day
    // later it goes.
    report.consumer_leases_deleted = client
        .execute("DELETE FROM consumer_leases WHERE expires_at < now() - interval '1 day'", &[])
        .await?;
    Ok(report)
}

/// Creates the partitions of `today` and the `ahead_days` after it that are missing.
async fn create_ahead(
    client: &Client,
    today: i64,
    ahead_days: u32,
    existing: &[String],
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    for day in today..=today + i64::from(ahead_days) {
        let name = partition_name(day);
        if existing.contains(&name) {
            continue;
        }
        // Names and bounds are made here from numbers, never from request data.
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}')",
                uuid_at_day(day),
                uuid_at_day(day + 1)
            ))
            .await?;
        report.created.push(name);
    }
    Ok(())
}

/// The first days kept, as day numbers: days before `delivered` go when all their
/// events are delivered, days before `undelivered` go whatever they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Horizons {
    delivered: i64,
    undelivered: Option<i64>,
}

impl Horizons {
    fn at(today: i64, config: &RetentionConfig) -> Horizons {
        let ceiling = config.undelivered_retention_days;
        Horizons {
            delivered: today - i64::from(config.retention_days),
            undelivered: (ceiling > 0).then(|| today - i64::from(ceiling.max(config.retention_days))),
        }
    }

    fn past_ceiling(&self, day: i64) -> bool {
        self.undelivered.is_some_and(|first_kept| day < first_kept)
    }
}

/// Detaches and drops the partitions older than the retention whose events are all
/// delivered, and those past the ceiling whatever they hold; keeps (and reports) the
/// others.
async fn drop_expired(
    client: &Client,
    horizons: Horizons,
    existing: &[String],
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    for name in existing {
        let Some(day) = day_of(name) else { continue };
        if day >= horizons.delivered {
            continue;
        }
        let past_ceiling = horizons.past_ceiling(day);
        if !past_ceiling {
            // EXISTS stops at the first undelivered row; a count would read the whole day.
            let undelivered: bool = client
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name} WHERE status <> 'delivered')"), &[])
                .await?
                .try_get(0)?;
            if undelivered {
                report.kept.push(name.clone());
                continue;
            }
        }
        // CONCURRENTLY: waits for queries using the partition, blocks no insert.
        client.batch_execute(&format!("ALTER TABLE events DETACH PARTITION {name} CONCURRENTLY")).await?;
        if past_ceiling {
            // Counted once detached: nothing can acknowledge or add an event any more,
            // so the count is exactly what is lost (the partial index serves it).
            let undelivered: i64 = client
                .query_one(&format!("SELECT count(*) FROM {name} WHERE status <> 'delivered'"), &[])
                .await?
                .try_get(0)?;
            if undelivered > 0 {
                tracing::warn!(
                    partition = %name,
                    undelivered,
                    "dropping a day past --undelivered-retention-days with undelivered events"
                );
                report.undelivered_dropped.push((name.clone(), undelivered as u64));
            }
        }
        client.batch_execute(&format!("DROP TABLE {name}")).await?;
        report.dropped.push(name.clone());
    }
    Ok(())
}

/// Deletes the attempt log rows of events below `bound` (the oldest partition left:
/// their events are gone), in bounded batches.
async fn delete_attempts_before(client: &Client, bound: Uuid) -> Result<u64, tokio_postgres::Error> {
    let mut deleted_total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM delivery_attempts WHERE ctid IN (
                    SELECT ctid FROM delivery_attempts WHERE event_id < $1 LIMIT $2)",
                &[&bound, &DEDUP_DELETE_BATCH],
            )
            .await?;
        deleted_total += deleted;
        if (deleted as i64) < DEDUP_DELETE_BATCH {
            return Ok(deleted_total);
        }
    }
}

/// Deletes dedup claims older than the 24 h window (plus an hour), in bounded batches.
async fn delete_expired_claims(client: &Client, now_micros: i64) -> Result<u64, tokio_postgres::Error> {
    let cutoff = now_micros - MICROS_PER_DAY - 3_600_000_000;
    let mut deleted_total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM event_dedup WHERE ctid IN (
                    SELECT ctid FROM event_dedup
                    WHERE created_at < timestamptz 'epoch' + $1::int8 * interval '1 microsecond' LIMIT $2)",
                &[&cutoff, &DEDUP_DELETE_BATCH],
            )
            .await?;
        deleted_total += deleted;
        if (deleted as i64) < DEDUP_DELETE_BATCH {
            return Ok(deleted_total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bounds() {
        let day = 20_783; // 2026-11-26
        assert_eq!(partition_name(day), "events_p20261126");
        assert_eq!(day_of("events_p20261126"), Some(day));
        assert_eq!(day_of("events_p19700101"), Some(0));
        assert_eq!(day_of("events_default"), None);
        assert_eq!(day_of("events_p2026112x"), None);
        let bound = uuid_at_day(day);
        let millis = u64::from_str_radix(&bound.simple().to_string()[..12], 16).unwrap();
        assert_eq!(millis as i64, day * 86_400_000, "48-bit millisecond prefix");
        assert!(bound.simple().to_string()[12..].bytes().all(|b| b == b'0'), "the rest zero");
        assert!(uuid_at_day(day) < uuid_at_day(day + 1));
    }

    fn config(retention_days: u32, undelivered_retention_days: u32) -> RetentionConfig {
        RetentionConfig {
            retention_days,
            undelivered_retention_days,
            ahead_days: 3,
            interval: Duration::ZERO,
        }
    }

    #[test]
    fn the_ceiling_is_a_day_horizon_or_none() {
        let today = 20_783;
        let horizons = Horizons::at(today, &config(30, 90));
        assert_eq!(horizons, Horizons { delivered: today - 30, undelivered: Some(today - 90) });
        assert!(horizons.past_ceiling(today - 91));
        assert!(!horizons.past_ceiling(today - 90), "day -90 is the oldest kept");
        assert_eq!(Horizons::at(today, &config(30, 0)).undelivered, None, "0: no ceiling");
        assert!(!Horizons::at(today, &config(30, 0)).past_ceiling(0));
        // Never below the retention, even if a caller passes one.
        assert_eq!(Horizons::at(today, &config(30, 7)).undelivered, Some(today - 30));
    }
}
