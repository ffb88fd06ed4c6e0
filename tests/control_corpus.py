"""The control-socket corpus of malformed requests (tests/data/control_corpus.json), shared by the codec's unit
test and the end-to-end test against a real supervisor.

Each entry has a `name`, the request as `text` (UTF-8), `hex` (any bytes) or `prefix` + `repeat` * `times` +
`suffix` (for the huge ones), and `error`: a substring the answer must contain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mcr.model.errors import ProtocolError, ValidationError
from mcr.model.rules import Limits
from mcr.protocol.control import AddRule, RemoveRule, RequestFramer, decode_request
from mcr.supervisor.core import RuleTable

CORPUS = Path(__file__).parent / "data" / "control_corpus.json"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    request: bytes
    error: str


def load_corpus() -> list[Case]:
    cases = []
    for entry in json.loads(CORPUS.read_text()):
        if "text" in entry:
            request = entry["text"].encode()
        elif "hex" in entry:
            request = bytes.fromhex(entry["hex"])
        else:
            request = (entry["prefix"] + entry["repeat"] * entry["times"] + entry["suffix"]).encode()
        cases.append(Case(entry["name"], request, entry["error"]))
    return cases


def pure_answer(request: bytes, table: RuleTable | None = None) -> str | None:
    """What the supervisor answers to `request` sent on a connection that is then half-closed, as far as the
    pure parts decide it: the framing, the codec and the rule table. None: the request would be served."""
    table = table or RuleTable(Limits())
    framer = RequestFramer(Limits().max_request_bytes)
    try:
        data = framer.feed(request)
        req = decode_request(framer.eof() if data is None else data)
        if isinstance(req, AddRule):
            table.add(req)
        elif isinstance(req, RemoveRule):
            table.remove(req.rule_id)
    except (ProtocolError, ValidationError) as e:
        return str(e)
    return None
