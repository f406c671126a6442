-- Job log lines, kept by the log relay. A row is a chunk: a run of consecutive lines of one
-- job (one log batch as the orchestrator published it), `lines` holding their JSON objects
-- comma-separated, exactly as served. Large chunks are compressed by TOAST.
CREATE TABLE log_chunks (
    job_id     uuid   NOT NULL,
    first_seq  bigint NOT NULL CHECK (first_seq >= 1),
    last_seq   bigint NOT NULL,
    lines      bytea  NOT NULL,
    CHECK (last_seq >= first_seq),
    PRIMARY KEY (job_id, last_seq)
);

-- (job, seq) is unique: a chunk that would store a line twice is not inserted. Writers of one
-- job are serialised on an advisory lock, so two relays cannot both insert the same lines;
-- the writer sees what was skipped (INSERT ... RETURNING) and stores any part not yet stored.
CREATE FUNCTION log_chunks_once() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    overlapping bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1819240307, hashtext(NEW.job_id::text));  -- 'logs'
    SELECT first_seq INTO overlapping FROM log_chunks
        WHERE job_id = NEW.job_id AND last_seq >= NEW.first_seq
        ORDER BY last_seq LIMIT 1;
    IF overlapping IS NOT NULL AND overlapping <= NEW.last_seq THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER log_chunks_once BEFORE INSERT ON log_chunks
    FOR EACH ROW EXECUTE FUNCTION log_chunks_once();

-- Per job: the highest seq and the number of lines stored. Retention finds its jobs here.
CREATE TABLE log_jobs (
    job_id  uuid   PRIMARY KEY,
    max_seq bigint NOT NULL,
    lines   bigint NOT NULL
);
