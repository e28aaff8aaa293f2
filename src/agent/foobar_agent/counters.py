"""A load balancer's per-server counters for the canary stage of a rollout (issue 22,
src/run/canary.rs): requests, 5xx answers, connection and response errors and the
average response time of every server of one backend, from HAProxy's `show stat`."""

from . import haproxy
from .core import AgentError, safe_name

# show stat columns -> the answer's keys (numbers; an empty column counts as 0).
COUNTERS = ("req_tot", "hrsp_5xx", "econ", "eresp", "rtime")


def _number(row, column):
    value = row.get(column) or "0"
    try:
        return int(value)
    except ValueError:
        raise AgentError("service", "HAProxy's show stat: %s is %r, not a number" % (column, value),
                         service="haproxy")


def op_haproxy_counters(req):
    """{"servers": [{"server", "status", "req_tot", "hrsp_5xx", "econ", "eresp", "rtime"}]}
    for the servers of `backend`, in HAProxy's order (an unknown backend: none)."""
    backend = safe_name(req.get("backend"), "backend")
    servers = []
    for (proxy, name), row in haproxy.haproxy_stat_rows().items():
        if proxy != backend or name in ("BACKEND", "FRONTEND", None):
            continue
        entry = {"server": name, "status": row.get("status") or ""}
        for column in COUNTERS:
            entry[column] = _number(row, column)
        servers.append(entry)
    return {"ok": True, "servers": servers}
