"""Day two: rules that survive restarts, a state file that is never lost, hitless config reload."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mcr.lab import SRC_IP, Lab
from tests.e2e.harness import Relay, mcr, read_state, send, start_sink, wait_for

CONFIG = """
[supervisor]
log_level = "info"

[[rule]]
id = "steady"
input_interface = "rin"
input_group = "239.1.1.1"
input_port = 5001
outputs = ["239.2.2.2:6001:rout"]

[[rule]]
id = "moving"
input_interface = "rin"
input_group = "239.1.1.2"
input_port = 5002
outputs = ["239.2.2.3:{port}:rout"]
"""


def test_rules_survive_restarts_with_their_ids(lab: Lab, workdir: Path) -> None:
    state = workdir / "state" / "rules.json"
    relay = Relay(lab, workdir, extra=["--state-file", str(state)]).start()
    try:
        relay.add("keep-me", "239.2.2.2:6001:rout")
        relay.ctl(
            "add",
            "--input-interface",
            "rin",
            "--input-group",
            "239.1.1.9",
            "--input-port",
            "7000",
            "--outputs",
            "239.2.2.9:7001:rout",
        )
        before = relay.rules()
        assert read_state(state) == [r["rule_id"] for r in before]
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGKILL)
        relay.proc.wait(10)
        relay.start()
        assert relay.rules() == before
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=1000)
        send(lab, count=1000, rate=5000)
        assert sink.result()["received"] == 1000
        relay.ctl("remove", "--rule-id", "keep-me")
        relay.stop()
        relay.start()
        assert [r["rule_id"] for r in relay.rules()] == [before[1]["rule_id"]]
    finally:
        relay.stop()


def test_corrupt_state_file_is_kept_aside(lab: Lab, workdir: Path) -> None:
    state = workdir / "rules.json"
    state.write_text("{ not json")
    relay = Relay(lab, workdir, extra=["--state-file", str(state)]).start()
    try:
        aside = list(workdir.glob("rules.json.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_text() == "{ not json"
        assert "is unusable" in relay.log() and str(aside[0]) in relay.log()
        relay.add("fresh", "239.2.2.2:6001:rout")
        assert read_state(state) == ["fresh"]
    finally:
        relay.stop()


def test_unwritable_state_refuses_the_change(lab: Lab, workdir: Path) -> None:
    blocker = workdir / "not-a-dir"
    blocker.write_text("")
    relay = Relay(lab, workdir, extra=["--state-file", str(blocker / "rules.json")]).start()
    try:
        result = relay.ctl(
            "add",
            "--rule-id",
            "x",
            "--input-interface",
            "rin",
            "--input-group",
            "239.1.1.1",
            "--input-port",
            "5001",
            "--outputs",
            "239.2.2.2:6001:rout",
            check=False,
        )
        assert result.returncode == 1 and "Rule x not added: cannot save state" in result.stderr
        assert relay.rules() == []
    finally:
        relay.stop()


def test_sighup_applies_only_the_difference(lab: Lab, workdir: Path) -> None:
    config = workdir / "mcr.toml"
    config.write_text(CONFIG.format(port=6002))
    relay = Relay(lab, workdir, extra=["--config", str(config)]).start()
    try:
        assert [(r["rule_id"], r["origin"]) for r in relay.rules()] == [("steady", "config"), ("moving", "config")]
        refused = relay.ctl("remove", "--rule-id", "steady", check=False)
        assert refused.returncode == 1 and "comes from" in refused.stderr
        count = 15_000
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=count)
        generator = subprocess.Popen(
            lab.exec_argv(
                lab.src,
                mcr(
                    "generate",
                    "--group",
                    "239.1.1.1",
                    "--port",
                    "5001",
                    "--interface",
                    SRC_IP,
                    "--rate",
                    "5000",
                    "--count",
                    str(count),
                    "--quiet",
                ),
            ),
        )
        wait_for(lambda: relay.flow("steady")["packets_relayed"] > 2000, 10, what="traffic on the steady rule")
        config.write_text(
            CONFIG.format(port=6099) + '\n[[rule]]\nid = "new"\ninput_interface = "rin"\n'
            'input_group = "239.1.1.3"\ninput_port = 5003\noutputs = ["239.2.2.4:6004:rout"]\n'
        )
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(relay.rules()) == 3, 10, what="the reload")
        moving = next(r for r in relay.rules() if r["rule_id"] == "moving")
        assert moving["outputs"][0]["port"] == 6099
        config.write_text("[[rule]]\nid = 'broken'\ninput_port = 'x'\n")
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload of" in relay.log() and "refused" in relay.log(), 10, what="the refusal")
        assert len(relay.rules()) == 3
        assert generator.wait(30) == 0
        report = sink.result()
        assert (report["received"], report["lost"], report["duplicated"]) == (count, 0, 0)
        assert relay.wait_relayed("steady", count)["packets_relayed"] == count
    finally:
        relay.stop()


def test_config_show_and_check(lab: Lab, workdir: Path) -> None:
    config = workdir / "mcr.toml"
    config.write_text(CONFIG.format(port=6002))
    relay = Relay(lab, workdir, extra=["--config", str(config), "--num-workers", "1"]).start()
    try:
        relay.add("rt", "239.2.2.9:6009:rout", group="239.1.1.9", port=5009)
        shown = relay.json("config", "show")["Config"]
        assert shown["path"] == str(config) and shown["settings"]["num_workers"] == 1
        assert [(r["rule_id"], r["origin"]) for r in shown["rules"]] == [
            ("steady", "config"),
            ("moving", "config"),
            ("rt", "runtime"),
        ]
        ok = relay.ctl("config", "check", str(config))
        assert ok.stdout.strip() == f"{config}: OK, 2 rules"
        bad = workdir / "bad.toml"
        bad.write_text("[[rule]]\nid = 'x'\ninput_interface = 'rin'\ninput_group = '239.1.1.1'\ninput_port = 0\n")
        refused = relay.ctl("config", "check", str(bad), check=False)
        assert refused.returncode == 1 and "rule[0] 'x': input_port cannot be 0" in refused.stderr
    finally:
        relay.stop()


def test_bad_config_file_is_named(lab: Lab, workdir: Path) -> None:
    config = workdir / "bad.toml"
    config.write_text('[[rule]]\nid = "r"\ninput_interface = "rin"\ninput_group = "239.1.1.1"\ninput_port = 70000\n')
    result = subprocess.run(
        lab.exec_argv(lab.relay, mcr("supervisor", "--config", str(config))), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{config}: rule[0] 'r': input_port 70000 is out of range" in result.stderr


def _scrape(lab: Lab, port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    fetch = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())"
    return subprocess.run(
        lab.exec_argv(lab.relay, [sys.executable, "-c", fetch]), capture_output=True, text=True, timeout=30, check=True
    ).stdout


def test_metrics_match_stats(lab: Lab, workdir: Path) -> None:
    relay = Relay(lab, workdir, extra=["--metrics-addr", "127.0.0.1:9431"]).start()
    try:
        relay.add("m", "239.2.2.2:6001:rout,239.2.2.3:6002:rout")
        send(lab, count=1200, rate=5000, size=700)
        relay.wait_relayed("m", 1200)

        def scraped() -> str:
            text = _scrape(lab, 9431)
            return text if 'mcr_rule_packets_total{input_group="239.1.1.1"' in text and " 1200\n" in text else ""

        text = wait_for(scraped, 10, interval=0.5, what="the metrics to show the traffic")
        labels = 'input_group="239.1.1.1",input_interface="rin",input_port="5001",input_source="",rule_id="m"'
        assert f"mcr_rule_packets_total{{{labels}}} 1200\n" in text  # a counter per flow: its integer
        assert f"mcr_rule_bytes_total{{{labels}}} 840000\n" in text
        out = 'group="239.2.2.3",interface="rout",output="1",port="6002",rule_id="m"'
        assert f"mcr_output_packets_total{{{out}}} 1200\n" in text
        assert f"mcr_output_errors_total{{{out}}} 0\n" in text
        assert re.search(r'mcr_rules\{engine="(userspace|kernel)",state="active"\} 1\.0', text), text
        assert 'mcr_worker_up{worker="0"} 1.0' in text
        flow = relay.flow("m")
        assert flow["packets_relayed"] == 1200 and flow["bytes_relayed"] == 840000
    finally:
        relay.stop()


def _recreate_input_link(lab: Lab) -> None:
    lab.netns(lab.relay, "ip", "link", "del", "rin")  # takes its peer src0 with it
    lab.netns(lab.relay, "ip", "link", "add", "rin", "type", "veth", "peer", "name", "src0", "netns", lab.src)
    lab.netns(lab.relay, "ip", "addr", "add", "10.200.9.1/24", "dev", "rin")
    lab.netns(lab.src, "ip", "addr", "add", f"{SRC_IP}/24", "dev", "src0")
    lab.netns(lab.relay, "ip", "link", "set", "rin", "up")
    lab.netns(lab.src, "ip", "link", "set", "src0", "up")


def test_input_interface_deleted_and_recreated(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    relay.add("hot", "239.2.2.2:6001:rout")
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=2000, idle=30)
    send(lab, count=1000, rate=5000)
    relay.wait_relayed("hot", 1000)
    _recreate_input_link(lab)
    wait_for(lambda: relay.rules()[0]["state"] == "active" and relay.ctl("ping", check=False).returncode == 0, 10)
    time.sleep(0.5)  # the new link's capture socket (or tcx link) is installed with the resolution
    send(lab, count=1000, rate=5000)
    report = sink.result()
    assert (report["received"], report["duplicated"], report["corrupted"]) == (2000, 0, 0)
    assert relay.wait_relayed("hot", 2000)["packets_relayed"] == 2000
    assert relay.rules()[0]["engine"] == engine


ORIGINAL_CONFIG = """\
// the original MCR's format: JSON5, rules without ids
{{
  multicast_ttl: 2,
  rules: [
    {{ name: "steady", input: {{ interface: "rin", group: "239.1.1.1", port: 5001 }},
       outputs: [ {{ group: "239.2.2.2", port: 6001, interface: "rout" }} ] }},
    {{ name: "moving", input: {{ interface: "rin", group: "239.1.1.2", port: 5002 }},
       outputs: [ {{ group: "239.2.2.3", port: {port}, interface: "rout" }}, ] }},
  ],
  control_plane: {{ rpf_provider: "static" }},
  flavour: "vanilla",
}}
"""


def test_the_originals_json5_config_loads_and_reloads_hitlessly(lab: Lab, workdir: Path) -> None:
    config = workdir / "mcr.json5"
    config.write_text(ORIGINAL_CONFIG.format(port=6002))
    relay = Relay(lab, workdir, extra=["--config", str(config)]).start()
    try:
        rules = relay.rules()
        assert [(r["name"], r["origin"], r["source"]) for r in rules] == [
            ("steady", "config", "Static"),
            ("moving", "config", "Static"),
        ]
        log = relay.log()
        assert "unknown key 'flavour' ignored" in log, log
        assert "section 'control_plane' accepted but not served: the control-plane integration" in log, log
        checked = relay.ctl("config", "check", str(config))
        assert checked.stdout.strip() == f"{config}: OK, 2 rules (JSON5, the original's format)"
        assert "unknown key 'flavour'" in checked.stderr
        assert relay.json("config", "show")["Config"]["multicast_ttl"] == 2
        steady = rules[0]["rule_id"]
        count = 10_000
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=count)
        generator = subprocess.Popen(
            lab.exec_argv(
                lab.src,
                mcr("generate", "--group", "239.1.1.1", "--port", "5001", "--interface", SRC_IP,
                    "--rate", "5000", "--count", str(count), "--quiet"),
            ),
        )  # fmt: skip
        wait_for(lambda: relay.flow(steady)["packets_relayed"] > 2000, 10, what="traffic on the steady rule")
        config.write_text(
            ORIGINAL_CONFIG.format(port=6099)
            .replace("flavour", "colour")
            .replace("multicast_ttl: 2", "multicast_ttl: 3")
        )
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: " in relay.log() and "'colour'" in relay.log(), 10, what="the reload")
        moving = next(r for r in relay.rules() if r["name"] == "moving")
        assert moving["outputs"][0]["port"] == 6099
        assert "multicast_ttl changes take effect at the next start" in relay.log()
        assert generator.wait(30) == 0
        report = sink.result()
        assert (report["received"], report["lost"], report["duplicated"]) == (count, 0, 0)
        assert relay.wait_relayed(steady, count)["packets_relayed"] == count
    finally:
        relay.stop()


def test_config_save_makes_the_running_rules_the_files(lab: Lab, workdir: Path) -> None:
    config = workdir / "mcr.json5"
    config.write_text(ORIGINAL_CONFIG.format(port=6002))
    state = workdir / "rules.json"
    relay = Relay(lab, workdir, extra=["--config", str(config), "--state-file", str(state)]).start()
    try:
        relay.ctl("add", "--rule-id", "rt", "--name", "runtime-one", "--input-interface", "rin", "--input-group",
                  "239.1.1.9", "--input-port", "5009", "--outputs", "239.2.2.9:6009:rout")  # fmt: skip
        assert read_state(state) == ["rt"]
        saved = relay.json("config", "save")
        assert saved == {"Success": f"Configuration saved to {config}"}
        # the file now holds every rule (ids kept), the state file none: a restart or reload finds each once
        on_disk = parse_json5(config.read_text())
        assert [r.get("name") for r in on_disk["rules"]] == ["steady", "moving", "runtime-one"]
        assert on_disk["control_plane"] == {"rpf_provider": "static"} and on_disk["multicast_ttl"] == 2
        assert read_state(state) == []
        assert {r["rule_id"]: r["origin"] for r in relay.rules()}["rt"] == "config"
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in relay.log(), 10, what="the reload")
        assert "0 added, 0 changed, 0 removed" in relay.log()
        # a copy elsewhere: root may choose the path
        copy = workdir / "copy.json5"
        assert relay.json("config", "save", "--file", str(copy)) == {"Success": f"Configuration saved to {copy}"}
        assert relay.ctl("config", "check", str(copy)).returncode == 0
        relative = relay.request({"SaveConfig": {"path": "copy.json5"}})
        assert "is relative: give an absolute path" in relative["Error"], relative
    finally:
        relay.stop()
    toml = workdir / "mcr.toml"
    toml.write_text(CONFIG.format(port=6002))
    relay = Relay(lab, workdir, extra=["--config", str(toml)]).start()
    try:
        refused = relay.ctl("config", "save", check=False)
        assert refused.returncode == 1 and "is TOML" in refused.stderr and "--file" in refused.stderr
    finally:
        relay.stop()


def parse_json5(text: str) -> dict[str, object]:
    import json5

    doc = json5.loads(text)
    assert isinstance(doc, dict)
    return doc
