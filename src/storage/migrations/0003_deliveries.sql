-- Webhook delivery state lives on the event row: when the next attempt is due, who
-- holds the lease on the attempt in progress and until when, and the last error.
-- next_attempt_at is set (to created_at) when an event is stored for an organisation
-- with a webhook, and cleared once the event is delivered, failed or push is off.
ALTER TABLE events
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN lease_owner     uuid,
    ADD COLUMN lease_until     timestamptz,
    ADD COLUMN last_error      text;

-- Due deliveries per organisation, oldest first; only rows with a delivery pending
-- are in it. Claims probe it per organisation with a webhook, so a claim costs
-- (organisations x attempts per organisation), not the size of the backlog.
CREATE INDEX events_due ON events (org_id, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX organizations_pushing ON organizations (org_id) WHERE webhook_url IS NOT NULL;
