"""`dockyard credentials`: identities for hosts that join a running installation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dockyard.cli.common import fail, run_async, settings

if TYPE_CHECKING:
    from dockyard.stack.nats_credentials import NatsCredentials

ENV_MODE = 0o600


@click.group("credentials")
def credentials() -> None:
    """NATS identities (and keys) for services on other hosts."""


@credentials.command("orchestrator")
@click.argument("name")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".dockyard"),
    show_default=True,
    help="The data dir of `dockyard up`, whose credentials/ holds the account key.",
)
@click.option(
    "--queues",
    default=None,
    help="Queues it serves, comma-separated (default: DOCKYARD_QUEUES, else `default`).",
)
def orchestrator(name: str, data_dir: Path, queues: str | None) -> None:
    """Make what one more orchestrator host needs; print its env file's path last.

    Its NATS identity may pull only its queues' offers, claim, report and publish logs as
    NAME, and heartbeat NAME's key. NATS needs no restart: users are not configured on the
    server, they carry a JWT the account key signed. The offer consumers of its queues are
    made too when NATS answers (DOCKYARD_NATS_URL, else the data dir's on 127.0.0.1:4222).
    """
    from dockyard.bus.permissions import InvalidIdentityName, check_name
    from dockyard.stack.nats_credentials import CredentialsError, NatsCredentials, credentials_dir

    chosen = queues if queues is not None else ",".join(settings().queues)
    queue_list = [q.strip() for q in chosen.split(",") if q.strip()] or ["default"]
    try:
        check_name(name)
        store = NatsCredentials(credentials_dir(data_dir))
        if not store.exists:
            fail(
                f"no NATS credentials in {store.directory}: start `dockyard up --data-dir "
                f"{data_dir}` once, which makes them"
            )
        creds = store.mint("orchestrator", name, queues=queue_list)
    except (InvalidIdentityName, CredentialsError) as error:
        fail(str(error))
    click.echo(f"NATS credential: {creds}")
    made = run_async(_offer_consumers(store, queue_list))
    if made:
        click.echo(f"offer consumers ready for: {', '.join(queue_list)}")
    else:
        click.echo(
            "NATS did not answer: the scheduler makes the offer consumers of the queues in "
            f"its DOCKYARD_QUEUES ({', '.join(queue_list)} must be there); until then the "
            "orchestrator waits for them"
        )
    lines = {
        "DOCKYARD_ORCHESTRATOR_ID": name,
        "DOCKYARD_NATS_CREDS": str(creds),
        "DOCKYARD_QUEUES": ",".join(queue_list),
    }
    for variable, file in _keys(store.directory).items():
        lines[variable] = str(file)
    env_path = store.directory / f"orchestrator-{name}.env"
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ENV_MODE)
    with os.fdopen(fd, "w") as env:
        env.writelines(f"{key}={value}\n" for key, value in lines.items())
    os.chmod(env_path, ENV_MODE)
    click.echo(str(env_path))


@credentials.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--orchestrators",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Orchestrator identities to make: compose-1 .. compose-N.",
)
@click.option(
    "--queues",
    default=None,
    help="Queues the orchestrators serve, comma-separated (default: DOCKYARD_QUEUES).",
)
def init(directory: Path, orchestrators: int, queues: str | None) -> None:
    """Make a compose deployment's credentials: one read-only directory per service.

    NATS's JWT auth and TLS, each service's NATS user, a CA with server certificates for
    `nats` and `postgres`, the claim key and the secrets key; kept across runs, service users
    minted afresh. compose.yaml runs this before anything else starts.
    """
    from dockyard.stack.deployment_credentials import DeploymentCredentials, Layout
    from dockyard.stack.nats_credentials import CredentialsError

    chosen = queues if queues is not None else ",".join(settings().queues)
    queue_list = tuple(q.strip() for q in chosen.split(",") if q.strip()) or ("default",)
    layout = Layout(orchestrators=orchestrators, queues=queue_list)
    try:
        written = DeploymentCredentials(directory, layout).ensure()
    except (CredentialsError, OSError) as error:
        fail(f"cannot make the credentials in {directory}: {error}")
    click.echo(f"credentials ready in {directory}: {', '.join(written)}")


@credentials.command("cluster")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--nodes",
    default="nats-1,nats-2,nats-3",
    show_default=True,
    help="The nodes' host names, comma-separated: each gets a certificate naming it.",
)
def cluster(directory: Path, nodes: str) -> None:
    """Make route TLS for a NATS cluster: a CA and a certificate per node (kept if there).

    Mount DIRECTORY at /etc/nats/certs on every node (deploy/nats/cluster/). Keep ca-key.pem
    off the nodes once they are made.
    """
    from dockyard.stack.deployment_credentials import cluster_certificates

    names = [n.strip() for n in nodes.split(",") if n.strip()]
    if not names:
        fail("--nodes: name at least one node")
    try:
        written = cluster_certificates(directory, names)
    except OSError as error:
        fail(f"cannot make the certificates in {directory}: {error}")
    click.echo(
        f"route certificates in {directory}: {len(written) // 2} made, "
        f"{len(names) - len(written) // 2} kept"
    )


def _keys(directory: Path) -> dict[str, Path]:
    """The claim public key and the secrets key, when `dockyard up` made them there."""
    found = {}
    for variable, name in (
        ("DOCKYARD_CLAIM_PUBLIC_KEY", "claim.pub"),
        ("DOCKYARD_SECRETS_KEY", "secrets.key"),
    ):
        if (directory / name).is_file():
            found[variable] = directory / name
    return found


async def _offer_consumers(store: NatsCredentials, queues: list[str]) -> bool:
    """Make the queues' offer durables with the admin identity; whether NATS answered."""
    from dockyard.bus.connection import Security, close, connect, jetstream
    from dockyard.bus.errors import BusError
    from dockyard.bus.topology import ensure_offer_consumers

    url = os.environ.get("DOCKYARD_NATS_URL") or "nats://127.0.0.1:4222"
    admin = store.creds_path("admin")
    if not admin.is_file():
        return False
    # This host's TLS settings, the admin identity.
    security = dataclasses.replace(Security.of(settings().nats_security), creds=admin)
    try:
        nc = await connect(url, "dockyard credentials", timeout_s=3.0, security=security)
    except BusError:
        return False
    try:
        await ensure_offer_consumers(jetstream(nc), queues)
    except BusError as error:
        click.echo(f"could not make the offer consumers: {error}", err=True)
        return False
    finally:
        await close(nc)
    return True
