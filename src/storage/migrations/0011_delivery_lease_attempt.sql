-- A delivery lease names the attempt it is for, as the claim's row lock read the event
-- (the newest version; the claim statement's snapshot may be older): when it came due,
-- and the attempt counts its retry schedule starts from. An outcome is recorded only
-- while the event is still scheduled at `due_at` (or off the schedule): a redelivery or
-- replay that commits while the outcome waits for the event's row lock moves
-- `next_attempt_at`, and PostgreSQL rechecks that on the row's new version, where it
-- reads the lease in the outcome statement's older snapshot (delivery::store, OWNED).
--
-- The leases held when this runs go (the table is UNLOGGED and only holds attempts in
-- flight): their attempts are claimed again, a second delivery at worst.
TRUNCATE delivery_leases;
ALTER TABLE delivery_leases
    ADD COLUMN due_at     timestamptz NOT NULL,
    ADD COLUMN attempts   integer     NOT NULL,
    ADD COLUMN retry_from integer     NOT NULL;
