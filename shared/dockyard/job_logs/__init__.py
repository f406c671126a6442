"""Job log lines in PostgreSQL: stored in chunks, read by range, removed after retention.

The log relay writes and serves them; the scheduler asks where a job's log ends (a new
attempt numbers its lines after it); the janitor purges them.
"""

from dockyard.job_logs.position import stored_log
from dockyard.job_logs.retention import Purged, purge_finished_logs
from dockyard.job_logs.store import LogStore, Page, last_stored_seq

__all__ = ["LogStore", "Page", "Purged", "last_stored_seq", "purge_finished_logs", "stored_log"]
