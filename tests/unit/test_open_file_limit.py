"""The supervisor raises its soft open-file limit to the hard one (what 1000 rule outputs per worker need)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import resource
from mcr.linux.privileges import raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
print(*raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
print(*raise_open_file_limit())
"""


def test_soft_limit_is_raised_to_the_hard_one_once() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    first, second = (line.split() for line in out.splitlines())
    before, after, now, hard = (int(x) for x in first)
    assert before == min(256, hard) and after == now == hard
    assert [int(x) for x in second] == [hard, hard], "already at the hard limit: nothing to do"
