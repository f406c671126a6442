"""How a service process runs: its event loop, its garbage-collection policy, supervising its
tasks until a stop signal, and cancelling tasks so that a stop is never lost."""
