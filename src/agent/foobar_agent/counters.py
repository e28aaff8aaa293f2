"""A load balancer's per-server counters for the canary stage of a rollout (issue 22,
src/run/canary.rs): requests, 5xx answers, connection and response errors and the
average response time of every server of one backend, from HAProxy's `show stat`; and,
for a p95 (rollout.max_p95_ms), each server's response times since a moment, from the
request log haproxy.cfg keeps in a ring (`show events RING`, HAProxy's httplog lines)."""

import datetime
import re

from . import haproxy
from .core import AgentError, now, safe_name

# show stat columns -> the answer's keys (numbers; an empty column counts as 0).
COUNTERS = ("req_tot", "hrsp_5xx", "econ", "eresp", "rtime")

# The ring is a few MB (src/render/context.rs, RING_SIZE); its dump is refused beyond this.
EVENTS_LIMIT = 16 << 20
# A response time above a day is no response time HAProxy measured: the line is malformed.
MAX_MS = 86400000

# One request of the ring: the ring's ISO date (`format iso`: when HAProxy logged it, at
# the response's end), then the httplog fields up to the status:
# CLIENT [ACCEPT_DATE] FRONTEND BACKEND/SERVER TR/Tw/Tc/Tr/Ta STATUS ...
# Only the fields HAProxy writes from the configuration come before the status; the
# request line (client data) comes after and is not read.
LINE = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d) \S+ \[[^\]\s]+\] [\w.:~-]+ "
    r"([\w.:-]+)/([\w.:-]+|<NOSRV>) (-1|\d{1,9})/(-1|\d{1,9})/(-1|\d{1,9})/(-1|\d{1,9})/"
    r"\+?(-1|\d{1,9}) (-1|\d{3}) ",
    re.ASCII)


def _number(row, column):
    value = row.get(column) or "0"
    try:
        return int(value)
    except ValueError:
        raise AgentError("service", "HAProxy's show stat: %s is %r, not a number" % (column, value),
                         service="haproxy")


def parse_events(text, backend, since_ms):
    """({server: {ms: requests}}, skipped lines) of the ring dump `text`: the response
    time (%Tr) of each request `backend`'s servers answered at or after `since_ms` (ms
    since the epoch, this host's clock). A line that does not parse is skipped and
    counted; requests with no server or no response (Tr -1) are no response time."""
    times = {}
    skipped = 0
    for line in text.split("\n"):
        if not line:
            continue
        m = LINE.match(line)
        if not m:
            skipped += 1
            continue
        proxy, server, tr = m.group(2), m.group(3), int(m.group(7))
        try:
            at = int(datetime.datetime.fromisoformat(m.group(1)).timestamp() * 1000)
        except ValueError:
            at = None
        if at is None or tr > MAX_MS:
            skipped += 1
            continue
        if at < since_ms or proxy != backend or server == "<NOSRV>" or tr < 0:
            continue
        per = times.setdefault(server, {})
        per[tr] = per.get(tr, 0) + 1
    return times, skipped


def response_times(spec, backend):
    """(times, skipped) as parse_events from the ring `spec` names; None for times when
    this HAProxy has no such ring (its haproxy.cfg was written without a p95 limit)."""
    if not isinstance(spec, dict):
        raise AgentError("request", "response_times must be an object")
    ring = safe_name(spec.get("ring"), "ring")
    since_ms = spec.get("since_ms")
    if not isinstance(since_ms, int) or isinstance(since_ms, bool) or since_ms < 0:
        raise AgentError("request", "response_times.since_ms must be a whole number")
    text = haproxy.haproxy_cmd("show events %s" % ring, limit=EVENTS_LIMIT)
    if text.strip() == "No such event sink":
        return None, 0
    return parse_events(text, backend, since_ms)


def op_haproxy_counters(req):
    """{"servers": [{"server", "status", "req_tot", "hrsp_5xx", "econ", "eresp", "rtime",
    "response_ms"}], "now_ms", "timed", "skipped"} for the servers of `backend`, in
    HAProxy's order (an unknown backend: none). `response_ms` lists [ms, requests] pairs
    (ascending) when `response_times` asks for them and the ring exists (`timed`)."""
    backend = safe_name(req.get("backend"), "backend")
    now_ms = int(now() * 1000)
    times, skipped = None, 0
    if req.get("response_times") is not None:
        times, skipped = response_times(req["response_times"], backend)
    servers = []
    for (proxy, name), row in haproxy.haproxy_stat_rows().items():
        if proxy != backend or name in ("BACKEND", "FRONTEND", None):
            continue
        entry = {"server": name, "status": row.get("status") or ""}
        for column in COUNTERS:
            entry[column] = _number(row, column)
        if times is not None:
            entry["response_ms"] = sorted([ms, n] for ms, n in times.get(name, {}).items())
        servers.append(entry)
    return {"ok": True, "servers": servers, "now_ms": now_ms, "timed": times is not None,
            "skipped": skipped}
