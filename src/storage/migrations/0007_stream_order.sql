-- The ordered stream: every event records the id of the transaction that inserted it
-- (xid8: 64 bits, never wraps). A reader takes events in (xid, id) order strictly
-- below the horizon of transactions still in progress
-- (pg_snapshot_xmin(pg_current_snapshot())): every transaction below it has ended, so
-- nothing can ever appear behind a position taken there. ARCHITECTURE.md has the proof.
--
-- Existing events get xid 1 (below every real transaction id, which start at 3): they
-- come first, in id order. The constant default makes this instant (no rewrite); new
-- rows then take the inserting transaction's id (the top-level one, also inside a
-- savepoint).
ALTER TABLE events ADD COLUMN xid xid8 NOT NULL DEFAULT '1';
ALTER TABLE events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX events_stream ON events (org_id, xid, id);
