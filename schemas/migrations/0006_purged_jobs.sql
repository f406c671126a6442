-- Jobs whose read-model row the janitor's retention removed (their events stay): a rebuild
-- of the read model leaves them out, so a purge is not undone by `dockyard db rebuild`.
CREATE TABLE purged_jobs (
    id        uuid        PRIMARY KEY,
    purged_at timestamptz NOT NULL DEFAULT now()
);
