"""Every operation of the agent protocol, by name (docs/DESIGN.md, "Remote agent
protocol"), and how one request becomes one answer."""

import json

from . import files, services
from .check import check_request
from .core import AgentError


def _op(module, function):
    """The op `function` of `module`, imported on its first call: an observe loads the
    modules it needs, not those of stage, commit, the database or the firewall (each
    module loaded is a few file reads on the host)."""
    def op(req):
        return getattr(__import__(module, globals(), None, [function], 1), function)(req)
    op.__name__ = function
    return op


OPS = {
    # a run: observe, stage (and validate), then commit or abort; rollback later
    "observe": _op("observe", "op_observe"),
    "stage": _op("stage", "op_stage"),
    "abort": _op("stage", "op_abort"),
    "commit": _op("commit", "op_commit"),
    "rollback": _op("commit", "op_rollback"),
    "history": _op("state", "op_history"),
    # the firewall's anti-lockout guard
    "firewall-confirm": _op("firewall", "op_firewall_confirm"),
    "firewall-guard": _op("firewall", "op_firewall_guard"),
    # the application's releases and the load balancer's runtime API
    "release-upload": _op("release", "op_release_upload"),
    "release-switch": _op("release", "op_release_switch"),
    "haproxy-server": _op("haproxy", "op_haproxy_server"),
    "haproxy-counters": _op("counters", "op_haproxy_counters"),
    # the database
    "db-replica-password": _op("db", "op_db_replica_password"),
    "db-replica-remove": _op("db", "op_db_replica_remove"),
    "db-primary": _op("db", "op_db_primary"),
    "db-seed-prepare": _op("db", "op_db_seed_prepare"),
    "db-replica-start": _op("db", "op_db_replica_start"),
    "db-wait-replica": _op("db", "op_db_wait_replica"),
    "db-fence": _op("db", "op_db_fence"),
    "db-catch-up": _op("db", "op_db_catch_up"),
    "db-promote": _op("db", "op_db_promote"),
    "db-replica-repair": _op("db", "op_db_replica_repair"),
    "db-restore-check": _op("db_restore", "op_db_restore_check"),
    "db-restore-prepare": _op("db_restore", "op_db_restore_prepare"),
    "db-restore-swap": _op("db_restore", "op_db_restore_swap"),
    "db-restore-abort": _op("db_restore", "op_db_restore_abort"),
}


def handle(raw):
    try:
        req = json.loads(raw)
    except ValueError as e:
        raise AgentError("request", "request is not valid JSON: %s" % e)
    if isinstance(req, dict):  # the envelope: the tool's service table, beside any op's fields
        services.learn(req.pop("service_table", None))
    if not isinstance(req, dict) or req.get("op") not in OPS:
        raise AgentError("request", "unknown op %r (expected one of %s)"
                         % (req.get("op") if isinstance(req, dict) else None, ", ".join(sorted(OPS))))
    check_request(req)  # the request fits its op's shape (shapes.py), or nothing runs
    files.forget_names()  # a kept agent serves many runs: user and group names per request
    try:
        return OPS[req["op"]](req)
    except OSError as e:
        raise AgentError("io", "%s: %s" % (e.filename or "", e.strerror or e), path=e.filename)


def answer_of(raw):
    try:
        return handle(raw)
    except AgentError as e:
        return e.answer()
