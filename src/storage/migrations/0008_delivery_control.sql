-- Delivery control (contract v2): type filters, secret rotation, redelivery and replay,
-- and the attempt log.
--
-- event_types: NULL pushes every type; otherwise exact types and `prefix.*` patterns.
-- The batch insert decides with triggerd_type_matches whether a new event is due for
-- push, inside the statement that stores it: no round trip per event.
ALTER TABLE organizations
    ADD COLUMN event_types                text[],
    ADD COLUMN previous_signing_secret    text,
    ADD COLUMN previous_secret_expires_at timestamptz;

CREATE FUNCTION triggerd_type_matches(patterns text[], event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT patterns IS NULL OR EXISTS (
        SELECT 1 FROM unnest(patterns) AS p
        WHERE p = event_type OR (right(p, 2) = '.*' AND starts_with(event_type, left(p, -1))))
$$;

-- The retry schedule of an event restarts when it is redelivered or replayed: the
-- schedule counts the attempts made since (attempts - retry_from).
ALTER TABLE events ADD COLUMN retry_from integer NOT NULL DEFAULT 0;

-- One row per attempt, written by the statement that records the attempt's outcome
-- (nothing at ingest). The last 50 attempts of an event are kept: attempt n lives in
-- slot n % 50 and overwrites the attempt 50 before it. Rows of events that retention
-- dropped are deleted by the maintenance pass (by event id range).
CREATE TABLE delivery_attempts (
    org_id       uuid        NOT NULL,
    event_id     uuid        NOT NULL,
    slot         smallint    NOT NULL,
    attempt      integer     NOT NULL,
    attempted_at timestamptz NOT NULL,
    status_code  smallint,
    error        text,
    duration_ms  integer     NOT NULL,
    PRIMARY KEY (org_id, event_id, slot)
);
CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event_id);
