-- Leased consumption: competing consumers of one organisation's inbox. A lease holds
-- events until it expires (decided by the database clock); an event is in at most one
-- live lease. These columns are the consumer's, apart from the delivery engine's
-- lease_owner/lease_until.
ALTER TABLE events
    ADD COLUMN consumer_lease       uuid,
    ADD COLUMN consumer_lease_until timestamptz,
    ADD COLUMN leases               integer NOT NULL DEFAULT 0;

-- Free pending events, oldest first: a claim reads the head of this index, O(page).
-- A leased event leaves it; an acknowledged or failed one too.
CREATE INDEX events_leaseable ON events (org_id, id) WHERE status = 'pending' AND consumer_lease IS NULL;
-- Leased pending events by expiry: a claim takes back expired ones from the head of
-- this index, O(page), never scanning live leases.
CREATE INDEX events_leased ON events (org_id, consumer_lease_until)
    WHERE status = 'pending' AND consumer_lease IS NOT NULL;

-- One row per lease that held events: what makes a lease id known, and until when.
CREATE TABLE consumer_leases (
    org_id     uuid        NOT NULL,
    lease_id   uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, lease_id)
);
CREATE INDEX consumer_leases_expiry ON consumer_leases (expires_at);
