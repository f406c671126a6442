-- Per job: the bytes of stdout and stderr text stored, over all attempts. A new attempt
-- starts its log cap from here, so the cap (16 MiB by default) is per job, as promised.
ALTER TABLE log_jobs ADD COLUMN bytes bigint NOT NULL DEFAULT 0;
