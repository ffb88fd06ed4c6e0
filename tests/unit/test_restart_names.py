"""Names of what a supervisor leaves for the next one: pin directories, handover sockets, adoption summaries."""

from __future__ import annotations

from pathlib import Path

from mcr.kernel.engine import Adoption
from mcr.supervisor.main import default_pin_dir, instance_name
from mcr.supervisor.workers import handover_path


def test_instance_names_keep_supervisors_apart() -> None:
    assert instance_name(Path("/run/mcr/control.sock")) == "default"
    a, b = instance_name(Path("/tmp/a/control.sock")), instance_name(Path("/tmp/b/control.sock"))
    assert a != b and len(a) == 12 and a.isalnum(), "distinct, and no dot (a bpf file system refuses them)"
    assert default_pin_dir(Path("/run/mcr/control.sock")) == Path("/sys/fs/bpf/mcr/default")


def test_handover_sockets_sit_next_to_the_control_socket() -> None:
    assert handover_path(Path("/run/mcr/control.sock"), 3) == Path("/run/mcr/control.sock.worker3")


def test_adoption_summary() -> None:
    assert Adoption().describe() == "nothing pinned was adopted"
    assert Adoption(True, True, (4,), 3).describe() == "maps adopted (3 rules), same program, links on ifindex [4]"
    assert Adoption(False, False, (4, 5), 0).describe().startswith("maps of another layout replaced")
