"""`dockyard up`'s data dir and its `credentials/`, made so that no other local user can plant,
swap or read anything in them (security review F7, F12).

Paths are walked one directory at a time through open directory descriptors. The data dir, and
everything this run creates, is never a symbolic link; the data dir must be the invoking user's
and writable by nobody else, and every directory above it must be root's or the user's and not
writable by others (unless sticky, like /tmp), so nobody can move it away under us. Anything
else is refused with a message saying what to do. Credential files are mode 0600 in a 0700
directory, created once (O_EXCL) and read only when nobody else could have written or read them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from dockyard.stack.errors import StackError

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
# A new data dir: PostgreSQL's own user (as root, PostgreSQL runs as another) may pass through
# to its `postgres/`, nobody may list it.
DATA_DIR_MODE = 0o711
_ANCESTOR_MODE = 0o755

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW
# Far larger than any credential: a bigger file is not one of ours.
_MAX_BYTES = 64 * 1024


class UnsafePath(StackError):
    """Raised when a data dir, credentials dir or credential file could be another user's doing
    (a symbolic link, someone else's, writable or readable by others); one line, with a fix."""


class MissingCredential(StackError):
    """Raised when a credential file that must exist does not."""


class DataDir:
    """A data dir checked (and made, 0711, if missing) by `open_data_dir`."""

    def __init__(self, path: Path, identity: tuple[int, int]) -> None:
        self.path = path
        self._identity = identity  # (st_dev, st_ino) as checked

    @property
    def credentials(self) -> Credentials:
        """`credentials/` (0700), made if missing."""
        with self._open() as fd:
            _ensure_private_dir(fd, "credentials", self.path / "credentials")
        return Credentials(self, "credentials")

    def read_file(self, name: str) -> str | None:
        """A file of the data dir written by `write_file`, or None when there is none."""
        with self._open() as fd:
            return _read_private(fd, name, self.path / name, missing_ok=True)

    def write_file(self, name: str, text: str) -> Path:
        """Write (replace) a 0600 file of the data dir, never through a link; its path."""
        with self._open() as fd:
            _replace_private(fd, name, text)
        return self.path / name

    @contextlib.contextmanager
    def _open(self, *sub: str) -> Iterator[int]:
        """A descriptor of the data dir (or a folder of it), still the directory checked."""
        fd = _open_dir_nofollow(None, str(self.path), self.path)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._identity:
                raise UnsafePath(f"the data dir {self.path} was replaced while in use: stopping")
            for name in sub:
                inner = _open_dir_nofollow(fd, name, self.path / name)
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)


class Credentials:
    """The secrets of one data dir, one file each, created once and read back."""

    def __init__(self, data_dir: DataDir, folder: str) -> None:
        self._data_dir = data_dir
        self._folder = folder
        self.path = data_dir.path / folder

    def file(self, name: str) -> Path:
        return self.path / name

    def read(self, name: str) -> str:
        """The credential `name`; MissingCredential, or UnsafePath, when it cannot be used."""
        with self._data_dir._open(self._folder) as fd:
            text = _read_private(fd, name, self.path / name, missing_ok=False)
        assert text is not None
        return text

    def get_or_create(self, name: str, make: Callable[[], str] | None = None) -> str:
        """The credential `name`, made with `make` (default: a random password) the first
        time. Two processes racing both get the one that was written first."""
        with self._data_dir._open(self._folder) as fd:
            text = _read_private(fd, name, self.path / name, missing_ok=True)
            if text is None:
                _create_private(fd, name, (make or new_password)())
                text = _read_private(fd, name, self.path / name, missing_ok=False)
        assert text is not None
        return text


def new_password() -> str:
    """32 random bytes, URL-safe: usable in a URL as it is."""
    return secrets.token_urlsafe(32)


def open_data_dir(path: Path) -> DataDir:
    """Check the data dir `path` (making it and missing parents), or raise UnsafePath."""
    path = Path(os.path.abspath(path))
    fd = os.open("/", _DIR_FLAGS)
    try:
        here = Path("/")
        parts = path.parts[1:]
        for i, name in enumerate(parts):
            here = here / name
            last = i == len(parts) - 1
            made = _mkdir(fd, name, DATA_DIR_MODE if last else _ANCESTOR_MODE, here)
            inner = _open_step(fd, name, here, follow_trusted_link=not (last or made))
            os.close(fd)
            fd = inner
            st = os.fstat(fd)
            if last:
                if made:
                    os.fchmod(fd, DATA_DIR_MODE)
                    st = os.fstat(fd)
                _check_own_dir(st, here, "data dir")
            else:
                _check_ancestor(st, here, path)
        st = os.fstat(fd)
        return DataDir(path, (st.st_dev, st.st_ino))
    finally:
        os.close(fd)


def write_private_file(path: Path, text: str) -> None:
    """Write a 0600 file of the user's own (`~/.config/dockyard/token`), its folder 0700 when
    made now; never through a link, and refused when it is someone else's."""
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    fd = _open_dir_nofollow(None, str(path.parent), path.parent)
    try:
        _replace_private(fd, path.name, text)
    finally:
        os.close(fd)


# -- the walk -----------------------------------------------------------------------------------


def _mkdir(dir_fd: int, name: str, mode: int, where: Path) -> bool:
    """Whether `name` was made now (False: it exists, whatever it is)."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    except OSError as error:
        raise StackError(f"cannot make {where}: {error.strerror}") from None
    return True


def _open_step(dir_fd: int, name: str, where: Path, *, follow_trusted_link: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=dir_fd)
    except OSError as error:
        st = _lstat(dir_fd, name)
        if st is None or not stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{where} cannot be used as a directory: {error.strerror}") from None
        target = os.readlink(name, dir_fd=dir_fd)
        # A system link above the data dir (/var/run -> /run) is root's choice: followed.
        if not follow_trusted_link or st.st_uid not in (0, os.geteuid()):
            raise UnsafePath(
                f"{where} is a symbolic link (to {target}): refusing to follow it, since "
                "whoever made it chooses where the data goes; give the real directory "
                "(--data-dir)"
            ) from None
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _open_dir_nofollow(dir_fd: int | None, name: str, where: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnsafePath(f"{where} is gone") from None
    except OSError as error:
        raise UnsafePath(
            f"{where} is not a directory of its own (a symbolic link?): {error.strerror}"
        ) from None


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _writable_by_others(st: os.stat_result) -> bool:
    """Writable by a user other than the owner: by all, or by a group not the owner's own."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_gid, st.st_uid)


def _private_group(gid: int, uid: int) -> bool:
    """A user private group (Debian's default): named as its user, no other member."""
    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def _check_own_dir(st: os.stat_result, where: Path, what: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafePath(
            f"refusing {what} {where}: it belongs to {_who(st.st_uid)}, not to you "
            f"({_who(me)}); use a directory of your own (--data-dir)"
        )
    if _writable_by_others(st):
        raise UnsafePath(
            f"refusing {what} {where}: others can write to it (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so they could plant files in it; "
            f"`chmod go-w {where}` or use another directory"
        )


def _check_ancestor(st: os.stat_result, where: Path, data_dir: Path) -> None:
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePath(
            f"refusing data dir {data_dir}: {where} on its way belongs to {_who(st.st_uid)}, "
            "who could swap what is under it; use a directory of your own"
        )
    if _writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            f"refusing data dir {data_dir}: {where} on its way can be written by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}) and is not sticky, so anyone could swap what is "
            f"under it; `chmod o-w,g-w {where}` or use another directory"
        )


# -- private directories and files ------------------------------------------------------------


def _ensure_private_dir(dir_fd: int, name: str, where: Path) -> None:
    _mkdir(dir_fd, name, PRIVATE_DIR_MODE, where)
    fd = _open_dir_nofollow(dir_fd, name, where)
    try:
        st = os.fstat(fd)
        _check_own_dir(st, where, "credentials dir")
        if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
            os.fchmod(fd, PRIVATE_DIR_MODE)  # readable by others at most: tightened
    finally:
        os.close(fd)


def _read_private(dir_fd: int, name: str, where: Path, *, missing_ok: bool) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise MissingCredential(
            f"{where} is missing: `dockyard up` makes it on the first start of a new data dir; "
            "restore it from a backup, or start with a fresh data dir"
        ) from None
    except OSError as error:
        raise UnsafePath(f"cannot read {where} ({error.strerror}): a symbolic link?") from None
    try:
        st = os.fstat(fd)
        _check_private_file(st, where)
        data = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_BYTES:
        raise UnsafePath(f"{where} is over {_MAX_BYTES} bytes: not a credential of ours")
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise UnsafePath(f"{where} is not text: not a credential of ours") from None


def _check_private_file(st: os.stat_result, where: Path) -> None:
    me = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"refusing {where}: not a regular file")
    if st.st_uid != me:
        raise UnsafePath(
            f"refusing {where}: it belongs to {_who(st.st_uid)}, not to you ({_who(me)}); remove it"
        )
    if st.st_mode & 0o077:
        raise UnsafePath(
            f"refusing {where}: its mode is {stat.S_IMODE(st.st_mode):04o}, so others may have "
            "read or changed it; remove it for a new one (or `chmod 600` it if it never left "
            "your hands)"
        )
    if st.st_nlink != 1:
        raise UnsafePath(f"refusing {where}: it has other names (hard links); remove it")


def _create_private(dir_fd: int, name: str, text: str) -> None:
    """Write `name` once: a temporary file made in full, then linked in (fails if it exists)."""
    temp = _write_temp(dir_fd, name, text)
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        pass  # another start made it first: theirs is read back
    finally:
        os.unlink(temp, dir_fd=dir_fd)
    os.fsync(dir_fd)


def _replace_private(dir_fd: int, name: str, text: str) -> None:
    """Write `name` in full under a temporary name, then rename it over the old one."""
    st = _lstat(dir_fd, name)
    if st is not None and (stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()):
        raise UnsafePath(f"refusing to replace {name}: it is a directory or someone else's")
    temp = _write_temp(dir_fd, name, text)
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def _write_temp(dir_fd: int, name: str, text: str) -> str:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, flags, PRIVATE_FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # whatever the umask
        os.write(fd, (text.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp, dir_fd=dir_fd)
        raise
    os.close(fd)
    return temp
