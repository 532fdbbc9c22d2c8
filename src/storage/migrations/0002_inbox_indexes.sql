-- Inbox views. Event ids are UUIDv7 carrying created_at to the microsecond, so id
-- order is (created_at, id) order and the primary key (org_id, id) serves the "all"
-- view. The status views get partial indexes: a pending event enters only the
-- undelivered one, and an acknowledged event moves to the delivered one.
CREATE INDEX events_undelivered ON events (org_id, id) WHERE status <> 'delivered';
CREATE INDEX events_delivered ON events (org_id, id) WHERE status = 'delivered';
