"""Reading credentials back from an open /proc/self/status (how a chrooted worker checks its drop)."""

from __future__ import annotations

import os

from mcr.linux.privileges import read_credentials


def test_an_open_status_file_is_read_afresh() -> None:
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        first = read_credentials(status_fd=fd)
        assert first == read_credentials()
        assert read_credentials(status_fd=fd) == first  # read again from offset 0, not at end of file
        assert first.uid == os.getuid()
    finally:
        os.close(fd)
