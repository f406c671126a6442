"""What `dockyard db migrate` and `dockyard db rebuild` do, for the CLI to call."""

from __future__ import annotations

from dockyard.store.migrations import migrate
from dockyard.store.pool import create_pool
from dockyard.store.rebuild import rebuild


async def db_migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied; return their names."""
    return await migrate(dsn)


async def db_rebuild(dsn: str) -> int:
    """Rebuild the jobs read model from the events; return how many events were folded."""
    pool = await create_pool(dsn, min_size=2, max_size=2)  # rebuild pipelines over two
    try:
        return await rebuild(pool)
    finally:
        await pool.close()
