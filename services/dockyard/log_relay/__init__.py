"""The log relay: keeps every log line (JetStream -> PostgreSQL) and serves them, stored and
live, over HTTP and WebSocket. The store itself is shared: `dockyard.job_logs`."""
