"""NATS and PostgreSQL run as local child processes, for `dockyard up` and the test suite."""

from dockyard.embedded._pg_install import postgres_bin_dir
from dockyard.embedded._process import EmbeddedServerError
from dockyard.embedded.nats import EmbeddedNats, NatsCluster, nats_server_binary
from dockyard.embedded.postgres import EmbeddedPostgres

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "NatsCluster",
    "nats_server_binary",
    "postgres_bin_dir",
]
