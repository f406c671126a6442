"""Which installation this is: an id kept in NATS, on every container and network it makes.

Every service of one installation shares one NATS, so they agree on the id without being
configured, whatever URL each uses to reach it. Two installations sharing a Docker engine
(staging beside production, a developer's `dockyard up` beside CI) have different ids, so a
janitor never takes another installation's containers for orphans of its own.
"""

from __future__ import annotations

import contextlib

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError
from nats.js.kv import KeyValue

from dockyard.bus import names
from dockyard.bus.errors import translated
from dockyard.core.ids import uuid7

_STREAM_NAME_IN_USE = 10058


def meta_bucket_config(replicas: int = 1) -> KeyValueConfig:
    """Facts about the installation that never expire (one value per key)."""
    return KeyValueConfig(
        bucket=names.META_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas
    )


async def deployment_id(js: JetStreamContext, *, replicas: int = 1) -> str:
    """The installation's id, made by whichever service asks first; BusUnavailable if NATS
    does not answer."""
    with translated():
        bucket = await _bucket(js, replicas)
        try:
            return await _read(bucket)
        except nats.js.errors.KeyNotFoundError:
            pass
        # Another service may make it meanwhile: then theirs stands.
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await bucket.create(names.DEPLOYMENT_KEY, uuid7().encode())
        return await _read(bucket)


async def _read(bucket: KeyValue) -> str:
    return ((await bucket.get(names.DEPLOYMENT_KEY)).value or b"").decode()


async def _bucket(js: JetStreamContext, replicas: int) -> KeyValue:
    try:
        return await js.create_key_value(meta_bucket_config(replicas))
    except APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        return await js.key_value(names.META_BUCKET)
