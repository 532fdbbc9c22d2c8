-- An acknowledged event is delivered: it leaves the delivery schedule. Until now an
-- acknowledgement kept next_attempt_at, so acknowledged events stayed due for
-- delivery scans forever (and in the events_due index).
UPDATE events SET next_attempt_at = NULL WHERE status = 'delivered' AND next_attempt_at IS NOT NULL;
