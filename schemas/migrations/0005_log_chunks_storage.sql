-- Chunk bodies arrive zlib-compressed by the log relay: PostgreSQL need not try its own
-- (pglz) compression on them again, which cost more than all the rest of storing a line.
ALTER TABLE log_chunks ALTER COLUMN lines SET STORAGE EXTERNAL;
