-- Organisations, their API keys, events and the dedup ledger.
-- Every table has org_id first in its primary key and unique indexes, so the schema
-- can be distributed by organisation (Citus) without a redesign.

CREATE TABLE organizations (
    org_id                uuid        NOT NULL PRIMARY KEY,
    name                  text        NOT NULL,
    tier                  text        NOT NULL CHECK (tier IN ('free', 'pro', 'business', 'enterprise')),
    rate_limit_per_minute integer     NOT NULL CHECK (rate_limit_per_minute > 0),
    webhook_url           text,
    signing_secret        text        NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Only an Argon2id hash of each key is stored. lookup_id is 64 random bits that are
-- part of the key; it finds candidate rows without revealing anything usable.
CREATE TABLE api_keys (
    org_id     uuid        NOT NULL REFERENCES organizations (org_id),
    lookup_id  bigint      NOT NULL,
    key_hash   text        NOT NULL,
    key_prefix text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, lookup_id)
);
CREATE INDEX api_keys_by_lookup ON api_keys (lookup_id);

CREATE TABLE events (
    org_id       uuid        NOT NULL,
    id           uuid        NOT NULL,
    type         text        NOT NULL,
    payload      jsonb       NOT NULL,
    dedup_id     text,
    status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    delivered_at timestamptz,
    PRIMARY KEY (org_id, id)
);

-- The authority for deduplication: one row per (organisation, dedup_id), pointing at
-- the event that claimed it. A claim older than 24 h may be taken over by a new event.
CREATE TABLE event_dedup (
    org_id     uuid        NOT NULL,
    dedup_id   text        NOT NULL,
    event_id   uuid        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, dedup_id)
);
