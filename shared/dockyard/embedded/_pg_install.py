"""Where PostgreSQL's binaries are, and making them and a data dir usable by its OS user.

PostgreSQL refuses to run as root, so as root it runs as a system user of its own, which must
be able to reach both the binaries and the data dir.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from dockyard.embedded._process import EmbeddedServerError

# Where, as root, the PostgreSQL build is copied when its server user cannot reach the wheel.
_MIRROR_ROOT = Path("/var/cache/dockyard")


def postgres_bin_dir() -> Path:
    """The `bin/` folder of the PostgreSQL build inside the installed `pgserver` wheel."""
    # find_spec instead of import: importing pgserver starts its manager machinery.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError("PostgreSQL binaries not found: `pip install pgserver`")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"pgserver is installed but {bin_dir}/postgres is missing")
    return bin_dir


def ensure_os_user(name: str) -> tuple[int, int]:
    """The (uid, gid) of system user `name`, created (idempotently) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        # Exit 9: another process created it meanwhile, which is what we wanted.
        if result.returncode not in (0, 9):
            raise EmbeddedServerError(
                f"could not create system user {name!r} to run PostgreSQL "
                f"(it refuses to run as root): {result.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def require_searchable(path: Path, run_as: tuple[int, int], who: str) -> None:
    """Fail clearly when `who` cannot reach `path` (e.g. under root's 0700 home or pytest tmp)."""
    blocked = _first_unsearchable(path, run_as)
    if blocked is not None:
        raise EmbeddedServerError(
            f"PostgreSQL runs as {who!r} (it refuses root) but {blocked} is not searchable "
            f"by that user, so it cannot reach {path}; pick a directory outside it "
            f"or `chmod o+x {blocked}`"
        )


def _first_unsearchable(path: Path, run_as: tuple[int, int]) -> Path | None:
    """The first directory on the way to `path` that the user cannot enter, by mode bits."""
    uid, gid = run_as
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def bin_dir_usable_by(bin_dir: Path, run_as: tuple[int, int]) -> Path:
    """`bin_dir`, or a copy of the PostgreSQL build where the server's user can run it.

    A venv under root's home (0700), as in a CI checkout in /root, is out of its reach.
    """
    install = bin_dir.parent  # .../pgserver/pginstall
    if _first_unsearchable(install / "share", run_as) is None:
        return bin_dir
    built = (bin_dir / "postgres").stat()
    mirror = _MIRROR_ROOT / f"pgserver-{built.st_size}-{int(built.st_mtime)}"
    if not (mirror / "pgserver" / "pginstall" / "bin" / "postgres").is_file():
        _copy_build(install, mirror)
    return mirror / "pgserver" / "pginstall" / "bin"


def _copy_build(install: Path, mirror: Path) -> None:
    # Keep the wheel's layout: initdb finds libpq through the rpath $ORIGIN/../../../pgserver.libs.
    _MIRROR_ROOT.mkdir(parents=True, exist_ok=True)
    _MIRROR_ROOT.chmod(0o755)
    staging = Path(tempfile.mkdtemp(dir=_MIRROR_ROOT))
    try:
        shutil.copytree(install, staging / "pgserver" / "pginstall", symlinks=True)
        libs = install.parent.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
        for directory in [staging, *staging.rglob("*")]:
            if directory.is_dir() and not directory.is_symlink():
                directory.chmod(0o755)
        # A rename is atomic: a concurrent start sees no copy or a whole one.
        staging.rename(mirror)
    except OSError:
        if not mirror.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def chown_tree(root_fd: int, root: Path, run_as: tuple[int, int]) -> None:
    """Give the directory open as `root_fd` and all below it to `run_as`, following no link
    (a planted link must not hand its target over)."""
    uid, gid = run_as
    if os.fstat(root_fd).st_uid == uid:
        return  # handed over on an earlier start
    for _, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        for name in [*dirnames, *filenames]:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    os.fchown(root_fd, uid, gid)
