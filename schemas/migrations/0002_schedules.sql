-- Cron and interval schedules. Configuration, not history: each firing's job is an event
-- stream of its own, with an id derived from (tenant, schedule, fire time), so two schedulers
-- firing the same time contend on one job and only one is made.
CREATE TABLE schedules (
    tenant     text        NOT NULL,
    name       text        NOT NULL,
    cron       text,
    interval_s double precision,
    job        jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    last_fire  timestamptz,
    next_fire  timestamptz NOT NULL,
    PRIMARY KEY (tenant, name),
    CHECK ((cron IS NULL) <> (interval_s IS NULL))
);
CREATE INDEX schedules_next_fire ON schedules (next_fire);
