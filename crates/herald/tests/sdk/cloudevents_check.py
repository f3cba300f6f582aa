"""Checks Herald against the official CloudEvents Python SDK (package `cloudevents`).

Usage: cloudevents_check.py BASE_URL

1. Events built with the SDK are sent in structured and binary mode; Herald must store them.
2. Events read back in the strict CloudEvents form (Accept: application/cloudevents+json and
   application/cloudevents-batch+json) must be accepted by the SDK's parser and validator,
   with the values Herald stored.
Prints one line per check and exits non-zero on the first failure.
"""
import json
import sys
import urllib.request

from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

base = sys.argv[1].rstrip("/")
fmt = JSONFormat()


def request(method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req) as res:
        return res.status, dict(res.headers), res.read()


ev = CloudEvent(
    attributes={"type": "sdk.structured", "source": "/sdk", "id": "s1", "subject": "café", "severity": "warning"},
    data={"message": "hello", "n": [1, 2]},
)
msg = to_structured(ev, fmt)
status, _, body = request("POST", "/v1/events", msg.body, dict(msg.headers))
assert status == 201, (status, body)
print("structured mode from the SDK: stored")

ev = CloudEvent(
    attributes={"type": "sdk.binary", "source": "/sdk", "id": "b1", "tenant": "acme", "datacontenttype": "application/json"},
    data={"message": "hi"},
)
msg = to_binary(ev, fmt)
status, _, body = request("POST", "/v1/events", msg.body, dict(msg.headers))
assert status == 201, (status, body)
print("binary mode from the SDK: stored")

# Events with Herald's structured members, read back in the strict form.
herald_ev = json.dumps([
    {"type": "sdk.rich", "source": "/sdk", "id": "r1", "time": "2026-11-01T10:00:00Z",
     "readers": ["user:1", "group:ops"], "context": {"path": "/x", "n": 1}, "data": {"k": "v"}},
]).encode()
status, _, body = request("POST", "/v1/events", herald_ev, {"content-type": "application/json"})
assert status == 201, (status, body)

status, headers, body = request("GET", "/v1/events?filter=source:/sdk", headers={"accept": "application/cloudevents-batch+json"})
assert status == 200, status
events = json.loads(body)
assert len(events) == 3, events
for item in events:
    parsed = fmt.read(None, json.dumps(item))
    assert parsed.get_source() == "/sdk"
    assert parsed.get_extension("seq") == item["seq"]
print("strict batch form parsed by the SDK:", len(events), "events")

status, headers, body = request("GET", "/v1/events/r1?source=/sdk", headers={"accept": "application/cloudevents+json"})
parsed = fmt.read(None, body)
assert parsed.get_type() == "sdk.rich"
assert parsed.get_extension("readers") == "user:1,group:ops", parsed.get_extension("readers")
assert json.loads(parsed.get_extension("context")) == {"path": "/x", "n": 1}
assert parsed.get_data() == {"k": "v"}
assert parsed.get_time().year == 2026
print("strict single form parsed by the SDK, structured members in string form")

status, headers, body = request("GET", "/v1/events/s1?source=/sdk", headers={"accept": "application/cloudevents+json"})
parsed = fmt.read(None, body)
assert parsed.get_subject() == "café" and parsed.get_extension("severity") == "warning"
print("values survive the round trip")
