"""`dockyard up`'s data dir and credentials (security review F7, F12): a data dir another user
could have planted or swapped anything in is refused with a message saying what to do, and
credential files are 0600 in a 0700 directory, made once, read only when nobody else could
have written or read them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.stack.data_dir import (
    MissingCredential,
    UnsafePath,
    open_data_dir,
    write_private_file,
)
from dockyard.stack.layout import Layout

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_data_dir_and_its_parents_are_made_and_nobody_else_may_list_it(
    tmp_path: Path,
) -> None:
    data_dir = open_data_dir(tmp_path / "a" / "b" / "data")
    assert data_dir.path == tmp_path / "a" / "b" / "data"
    assert mode(data_dir.path) == 0o711
    assert mode(tmp_path / "a") == 0o755 & ~_umask()


def test_credentials_are_0600_in_a_0700_dir_made_once(tmp_path: Path) -> None:
    credentials = open_data_dir(tmp_path / "data").credentials
    first = credentials.get_or_create("postgres-app.password")
    assert len(first) >= 40
    assert credentials.get_or_create("postgres-app.password") == first
    assert credentials.read("postgres-app.password") == first
    assert mode(tmp_path / "data" / "credentials") == 0o700
    assert mode(credentials.file("postgres-app.password")) == 0o600
    # Nothing half-written is left behind.
    assert [p.name for p in credentials.path.iterdir()] == ["postgres-app.password"]


def test_a_missing_credential_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    credentials = open_data_dir(tmp_path / "data").credentials
    with pytest.raises(MissingCredential, match=r"postgres-superuser.password is missing"):
        credentials.read("postgres-superuser.password")


def test_a_data_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        open_data_dir(tmp_path / "data")


@as_root
def test_a_symlink_above_the_data_dir_made_by_another_user_is_refused(tmp_path: Path) -> None:
    # A link above the data dir is followed only when root or the user made it.
    (tmp_path / "victim").mkdir()
    (tmp_path / "parent").symlink_to(tmp_path / "victim")
    os.lchown(tmp_path / "parent", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        open_data_dir(tmp_path / "parent" / "data")
    assert list((tmp_path / "victim").iterdir()) == []


@as_root
def test_a_data_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    os.chown(tmp_path / "data", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=r"belongs to uid 65534 .*not to you"):
        open_data_dir(tmp_path / "data")


@as_root
def test_a_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=r"theirs on its way belongs to uid 65534"):
        open_data_dir(tmp_path / "theirs" / "data")


def test_a_world_writable_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(0o777)
    with pytest.raises(UnsafePath, match=r"others can write to it \(mode 0777\).*chmod go-w"):
        open_data_dir(tmp_path / "data")


def test_a_world_writable_parent_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match=r"can be written by others .*not sticky"):
        open_data_dir(shared / "data")
    shared.chmod(0o1777)  # like /tmp: nobody can move our entries
    assert open_data_dir(shared / "data").path == shared / "data"


def test_a_credentials_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    data_dir = open_data_dir(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "data" / "credentials").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="credentials"):
        data_dir.credentials.get_or_create("x")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_credential_others_could_read_or_a_link_is_refused(tmp_path: Path) -> None:
    credentials = open_data_dir(tmp_path / "data").credentials
    credentials.get_or_create("loose")
    credentials.file("loose").chmod(0o644)
    with pytest.raises(UnsafePath, match=r"mode is 0644, so others may have read"):
        credentials.read("loose")
    (tmp_path / "target").write_text("planted\n")
    credentials.file("linked").symlink_to(tmp_path / "target")
    with pytest.raises(UnsafePath, match="symbolic link"):
        credentials.get_or_create("linked")


def test_the_token_written_is_0600_and_never_through_a_link(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    config = tmp_path / "config" / "dockyard"
    config.mkdir(parents=True)
    (config / "token").symlink_to(victim)
    written = layout.write_token("tok", {"XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert written == [tmp_path / "data" / "token", config / "token"]
    assert victim.read_text() == "precious\n"  # the link was replaced, not followed
    for path in written:
        assert not path.is_symlink()
        assert mode(path) == 0o600
        assert path.read_text() == "tok\n"


def test_a_token_file_others_could_have_written_is_not_adopted(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    layout.write_token("mine", {"XDG_CONFIG_HOME": str(tmp_path / "config")})
    (tmp_path / "data" / "token").chmod(0o666)
    with pytest.raises(UnsafePath, match="token"):
        layout.tokens({})


def test_write_private_file_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "token"
    path.parent.mkdir()
    path.write_text("old\n")
    path.chmod(0o644)
    write_private_file(path, "new")
    assert mode(path) == 0o600
    assert path.read_text() == "new\n"


def test_up_refuses_a_symlinked_data_dir_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "elsewhere")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    result = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "up", "--data-dir", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "is a symbolic link" in result.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
