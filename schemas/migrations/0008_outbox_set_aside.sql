-- Events the outbox relay could not deliver because NATS refused the message itself (an
-- invalid subject, a payload over max_payload), or that no current validation accepts: set
-- aside so that one message never stops the relay for everyone, and kept for the operator.
CREATE TABLE outbox_set_aside (
    event_id     uuid        PRIMARY KEY,  -- of an event in `events` (never deleted)
    job_id       uuid        NOT NULL,
    type         text        NOT NULL,
    position     bigint      NOT NULL,
    tx_id        xid8        NOT NULL,
    error        text        NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now()
);

-- The relay reads what lies ahead of its checkpoint (`skipped_after`).
CREATE INDEX outbox_set_aside_order ON outbox_set_aside (tx_id, position);
