-- The append-only event log: the source of truth for every job.
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id         uuid        NOT NULL,
    version        integer     NOT NULL CHECK (version >= 1),
    event_id       uuid        NOT NULL UNIQUE,
    type           text        NOT NULL,
    schema_version smallint    NOT NULL DEFAULT 1,
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction: the catch-up order is (tx_id, position), read only below
    -- the oldest running transaction, so a slow transaction's events are never skipped.
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (job_id, version)
);
CREATE INDEX events_catch_up ON events (tx_id, position);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only_rows BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dockyard_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Where each catch-up reader (the outbox relay, projections) has got to.
CREATE TABLE checkpoints (
    name     text   PRIMARY KEY,
    tx_id    xid8   NOT NULL,
    position bigint NOT NULL
);

-- The jobs read model: the fold of each job's events, written in the appending transaction.
CREATE TABLE jobs (
    id              uuid        PRIMARY KEY,
    tenant          text        NOT NULL,
    status          text        NOT NULL,
    queue           text        NOT NULL,
    attempt         integer     NOT NULL,
    version         integer     NOT NULL,
    idempotency_key text,
    labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    due_at          timestamptz,
    orchestrator    text,
    view            jsonb       NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status ON jobs (status, queue);
CREATE INDEX jobs_due ON jobs (due_at) WHERE status = 'scheduled';
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops);
