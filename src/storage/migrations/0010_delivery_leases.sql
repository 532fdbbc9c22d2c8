-- The delivery engine's leases leave the event row (issue 16). A claim used to set
-- lease_owner/lease_until on the event: a new version of a wide row whose page is full,
-- so every claim wrote a tuple and 5 index entries (pkey, undelivered, due, leaseable,
-- stream), about half of PostgreSQL's CPU per delivery. A lease is now a row of its own
-- in a narrow table: the claim locks the event row (no new version) and inserts or
-- takes over the lease; the outcome deletes it.
--
-- UNLOGGED: a lease is worth nothing after a crash of PostgreSQL, which empties the
-- table. That makes the leased attempts claimable again: a second delivery, which
-- at-least-once allows (the claiming connection's commits were already asynchronous for
-- the same reason). Leases held when this migration runs are dropped likewise.
CREATE UNLOGGED TABLE delivery_leases (
    org_id   uuid        NOT NULL,
    event_id uuid        NOT NULL,
    -- The process holding the attempt (its engine's id).
    owner    uuid        NOT NULL,
    until    timestamptz NOT NULL,
    PRIMARY KEY (org_id, event_id)
) WITH (fillfactor = 70);
-- fillfactor: a lease taken over after it expired is an update of its row; room on the
-- page keeps it HOT (owner and until are in no index). The table holds the attempts in
-- flight and the few leases whose outcome never came, which retention sweeps by a scan.
ALTER TABLE events DROP COLUMN lease_owner, DROP COLUMN lease_until;
