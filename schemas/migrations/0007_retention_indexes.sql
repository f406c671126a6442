-- Retention sweeps find what to purge through an index, not a scan of everything retained:
-- jobs by when they finished (the janitor's job-row purge), logs by when their first line
-- was stored (the log purge walked every job with logs, and looked each up, every sweep).
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE log_jobs ADD COLUMN since timestamptz NOT NULL DEFAULT now();
UPDATE log_jobs l SET since = j.created_at FROM jobs j WHERE j.id = l.job_id;
CREATE INDEX log_jobs_since ON log_jobs (since);
