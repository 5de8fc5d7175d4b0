"""`agent.writeback`: sync_file_range through libc, and the fsync-only fallback."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.writeback import SYNC_FILE_RANGE_WRITE, Writeback, libc_sync_file_range

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")


@pytest.fixture
def written(tmp_path: Path) -> Iterator[int]:
    """An open file holding 256 KB not yet written back."""
    fd = os.open(tmp_path / "slot.dcm", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\x5a" * 262_144)
        yield fd
    finally:
        os.close(fd)


class FailingCall:
    """Stands in for libc's sync_file_range: fails with `code` as the C function would."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls: list[tuple[int, int, int, int]] = []

    def __call__(self, fd: int, offset: int, nbytes: int, flags: int) -> int:
        self.calls.append((fd, offset, nbytes, flags))
        ctypes.set_errno(self.code)
        return -1


@linux_only
def test_libc_has_sync_file_range_on_linux() -> None:
    assert libc_sync_file_range() is not None
    assert Writeback.from_libc().available


@linux_only
def test_start_returns_and_the_file_is_then_fsynced_whole(written: int, tmp_path: Path) -> None:
    writeback = Writeback.from_libc()

    writeback.start(written)
    os.fsync(written)

    assert writeback.available
    assert (tmp_path / "slot.dcm").read_bytes() == b"\x5a" * 262_144


@linux_only
def test_start_raises_the_error_of_a_file_it_cannot_write_back() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError, match="sync_file_range") as raised:
            Writeback.from_libc().start(write_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert raised.value.errno == errno.ESPIPE


def test_without_sync_file_range_start_does_nothing_and_says_so_once(written: int) -> None:
    with capture_logs() as logs:
        writeback = Writeback(None)
        writeback.start(written)
        writeback.start(written)

    assert not writeback.available
    assert [log["log_level"] for log in logs] == ["debug"]
    os.fsync(written)  # the fallback: the fsync alone writes the file back


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL])
def test_a_kernel_or_filesystem_without_it_falls_back_to_fsync_for_good(
    written: int, code: int
) -> None:
    unsupported = FailingCall(code)
    with capture_logs() as logs:
        writeback = Writeback(unsupported)
        writeback.start(written)
        writeback.start(written)

    assert unsupported.calls == [(written, 0, 0, SYNC_FILE_RANGE_WRITE)]
    assert not writeback.available
    assert [log["log_level"] for log in logs] == ["debug"]
    os.fsync(written)


def test_another_error_is_raised_and_the_next_start_tries_again(written: int) -> None:
    failing = FailingCall(errno.EIO)
    writeback = Writeback(failing)

    for _ in range(2):
        with pytest.raises(OSError, match="sync_file_range") as raised:
            writeback.start(written)
        assert raised.value.errno == errno.EIO

    assert len(failing.calls) == 2
    assert writeback.available
