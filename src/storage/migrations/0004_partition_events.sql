-- Events partitioned by day, by range of id: a UUIDv7 id begins with its creation
-- time in milliseconds, so one day of events is one id range, the primary key
-- (org_id, id) already holds the partition key, and a lookup by id reads one
-- partition. Retention drops whole partitions instead of deleting rows.

-- The smallest UUIDv7 of an instant: 48 bits of milliseconds, the rest zero.
CREATE FUNCTION triggerd_uuid_at(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '00000000000000000000')::uuid
$$;

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey;
ALTER INDEX events_undelivered RENAME TO events_unpartitioned_undelivered;
ALTER INDEX events_delivered RENAME TO events_unpartitioned_delivered;
ALTER INDEX events_due RENAME TO events_unpartitioned_due;

CREATE TABLE events (
    org_id          uuid        NOT NULL,
    id              uuid        NOT NULL,
    type            text        NOT NULL,
    payload         jsonb       NOT NULL,
    dedup_id        text,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    next_attempt_at timestamptz,
    lease_owner     uuid,
    lease_until     timestamptz,
    last_error      text,
    PRIMARY KEY (org_id, id)
) PARTITION BY RANGE (id);
CREATE INDEX events_undelivered ON events (org_id, id) WHERE status <> 'delivered';
CREATE INDEX events_delivered ON events (org_id, id) WHERE status = 'delivered';
CREATE INDEX events_due ON events (org_id, next_attempt_at) WHERE next_attempt_at IS NOT NULL;

-- No DEFAULT partition: it would overlap every range, which forbids dropping old
-- partitions with DETACH ... CONCURRENTLY (without blocking ingest) and turns the
-- inbox's ordered scan into a merge. The server keeps partitions ahead of time.

-- Daily partitions from the oldest existing event to three days ahead; the server
-- keeps creating them ahead (storage/retention.rs).
DO $$
DECLARE
    day date := coalesce((SELECT min(created_at) FROM events_unpartitioned)::date, current_date);
BEGIN
    WHILE day <= current_date + 3 LOOP
        EXECUTE format(
            'CREATE TABLE events_p%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
            to_char(day, 'YYYYMMDD'),
            triggerd_uuid_at(day::timestamptz AT TIME ZONE 'UTC'),
            triggerd_uuid_at((day + 1)::timestamptz AT TIME ZONE 'UTC'));
        day := day + 1;
    END LOOP;
END $$;

INSERT INTO events (org_id, id, type, payload, dedup_id, status, attempts, created_at, delivered_at,
                    next_attempt_at, lease_owner, lease_until, last_error)
SELECT org_id, id, type, payload, dedup_id, status, attempts, created_at, delivered_at,
       next_attempt_at, lease_owner, lease_until, last_error
FROM events_unpartitioned;
DROP TABLE events_unpartitioned;

-- The dedup ledger is not partitioned with the events (its 24 h window must not
-- depend on partition boundaries); claims older than the window are deleted.
CREATE INDEX event_dedup_created ON event_dedup (created_at);
