-- Rate limits across instances: one budget row per organisation, from which every
-- instance leases slices of the current window (storage/ratelimit.rs). The row is the
-- authority for the window's start (so every instance reports the same reset) and for
-- how much of the limit has been leased out in it; it never leases more than the limit.
CREATE TABLE rate_budgets (
    org_id          uuid    PRIMARY KEY,
    -- Unix ms: the `now` of the lease that opened the window (an instance's clock).
    window_start_ms bigint  NOT NULL,
    -- Tokens of this window leased to instances (less what they gave back).
    used            integer NOT NULL CHECK (used >= 0),
    -- What the last lease got: its RETURNING value, kept in the row so the lease stays
    -- one statement.
    granted         integer NOT NULL CHECK (granted >= 0)
) WITH (fillfactor = 50);
-- fillfactor: a busy organisation's row is updated a few times a second per instance;
-- room on the page keeps those updates HOT (no index to touch).
