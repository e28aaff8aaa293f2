"""Every operation of the agent protocol, by name (docs/DESIGN.md, "Remote agent
protocol"), and how one request becomes one answer."""

import json

from . import counters, db, db_restore, firewall, haproxy, release, services
from .check import check_request
from .commit import op_commit, op_rollback
from .core import AgentError
from .observe import op_observe
from .stage import op_abort, op_stage
from .state import op_history

OPS = {
    # a run: observe, stage (and validate), then commit or abort; rollback later
    "observe": op_observe,
    "stage": op_stage,
    "abort": op_abort,
    "commit": op_commit,
    "rollback": op_rollback,
    "history": op_history,
    # the firewall's anti-lockout guard
    "firewall-confirm": firewall.op_firewall_confirm,
    "firewall-guard": firewall.op_firewall_guard,
    # the application's releases and the load balancer's runtime API
    "release-upload": release.op_release_upload,
    "release-switch": release.op_release_switch,
    "haproxy-server": haproxy.op_haproxy_server,
    "haproxy-counters": counters.op_haproxy_counters,
    # the database
    "db-replica-password": db.op_db_replica_password,
    "db-replica-remove": db.op_db_replica_remove,
    "db-primary": db.op_db_primary,
    "db-seed-prepare": db.op_db_seed_prepare,
    "db-replica-start": db.op_db_replica_start,
    "db-wait-replica": db.op_db_wait_replica,
    "db-fence": db.op_db_fence,
    "db-catch-up": db.op_db_catch_up,
    "db-promote": db.op_db_promote,
    "db-replica-repair": db.op_db_replica_repair,
    "db-restore-check": db_restore.op_db_restore_check,
    "db-restore-prepare": db_restore.op_db_restore_prepare,
    "db-restore-swap": db_restore.op_db_restore_swap,
    "db-restore-abort": db_restore.op_db_restore_abort,
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
    try:
        return OPS[req["op"]](req)
    except OSError as e:
        raise AgentError("io", "%s: %s" % (e.filename or "", e.strerror or e), path=e.filename)


def answer_of(raw):
    try:
        return handle(raw)
    except AgentError as e:
        return e.answer()
