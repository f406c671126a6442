"""`python -m dockyard.cli SERVICE`: how `dockyard up` starts each service as its own process."""

from dockyard.cli.main import main

main()
