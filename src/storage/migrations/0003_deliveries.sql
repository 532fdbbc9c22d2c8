-- Webhook delivery state lives on the event row: when the next attempt is due, who
-- holds the lease on the attempt in progress and until when, and the last error.
-- next_attempt_at is set (to created_at) when an event is stored for an organisation
-- with a webhook, and cleared once the event is delivered, failed or push is off.
ALTER TABLE events
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN lease_owner     uuid,
    ADD COLUMN lease_until     timestamptz,
    ADD COLUMN last_error      text;

-- Due deliveries, oldest first. Only rows with a delivery pending are in it.
CREATE INDEX events_due ON events (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
