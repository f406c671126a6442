"""The log relay: keeps every log line (JetStream -> PostgreSQL) and serves them, stored and
live, over HTTP and WebSocket. `store.last_stored_seq` and `store.purge_finished_logs` are
for the scheduler and the janitor."""

from dockyard.log_relay.store import LogStore, Purged, last_stored_seq, purge_finished_logs

__all__ = ["LogStore", "Purged", "last_stored_seq", "purge_finished_logs"]
