"""The host's services: the init system, whether a service runs (its pid file, else its
init system), the actions reload/restart/start/stop, and the service's error log. What
a service's pid file, error log and validator are comes from the tool with each request
(the service table, src/services.rs): the agent keeps no list of its own."""

import os

from . import paths
from .boot import BOOT_STATES, boot_enabled, enable_service, systemd_show, unit_kind
from .core import AgentError
from .files import remove_quiet
from .haproxy import HAPROXY_STATE, save_haproxy_state
from .proc import quiet, run


TABLE = {}  # unit -> {"pid_file", "error_log", "validator", "database", "server_state"}: the tool's


def learn(table):
    """The service table a request carries (src/services.rs, `agent_table`): the agent
    knows nothing of a service but what the tool sends (a request without one keeps the
    table of the one before, e.g. in a serving agent)."""
    if isinstance(table, dict):
        global TABLE
        TABLE = table


def row(name):
    entry = TABLE.get(name)
    return entry if isinstance(entry, dict) else {}


def units_where(field):
    """The units whose row sets `field` (database, server_state), in the table's order."""
    return [n for n in TABLE if row(n).get(field) is True]


def pid_file(name):
    """The pid file whose live process shows the service running (None: it has none)."""
    p = row(name).get("pid_file")
    return p if isinstance(p, str) else None


def validated_by(kind):
    """The service whose validator is of `kind` (the table's), or AgentError."""
    for name in TABLE:
        if (row(name).get("validator") or {}).get("kind") == kind:
            return name
    raise AgentError("request", "the service table has no validator of kind %r" % (kind,))


def validator_argv(name, f):
    """The argv that validates file `f` of the service ({file} in the table's argv)."""
    argv = (row(name).get("validator") or {}).get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise AgentError("request", "the service table has no validator for %s" % name, service=name)
    return [a.replace("{file}", f) for a in argv]


def init_system():
    return "systemd" if os.path.isdir(paths.SYSTEMD_RUN) else "sysv"


def service_running(name, init):
    if init == "systemd":
        return quiet(["systemctl", "is-active", "--quiet", name]) == 0
    # A live process behind the service's pidfile answers without running its init
    # script (tens of milliseconds each); otherwise ask the script.
    if service_pid(name):
        return True
    return quiet(["service", name, "status"]) == 0


# The ActiveState values for which `systemctl is-active` answers 0.
ACTIVE_STATES = frozenset(("active", "reloading", "refreshing"))


def observe_services(names, init):
    """What observe reports of each service: running, its pid and whether it starts at
    boot. Under systemd one `systemctl show` answers for every service with a unit file
    (instead of an `is-active` per service and an `is-enabled`: ~25 ms each on the lab);
    the others, and sysv hosts, as service_running and boot_enabled say."""
    shown = systemd_show([n for n in names if unit_kind(n) == "unit"]) if init == "systemd" else {}
    boot = boot_enabled([n for n in names if n not in shown], init)
    states = {}
    for n in names:
        if n in shown:
            active, file_state = shown[n]
            running, enabled = active in ACTIVE_STATES, file_state in BOOT_STATES
        else:
            running, enabled = service_running(n, init), boot.get(n)
        states[n] = {"running": running, "pid": service_pid(n), "enabled": enabled}
    return states


def service_pid(name):
    pf = pid_file(name)
    if not pf:
        return None
    try:
        with open(pf) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)  # a hard kill leaves stale pid files behind
        return pid
    except (OSError, ValueError, IndexError):
        return None


def service_action(name, action, init):
    """Run reload/restart/start; returns (code, output, action actually run).
    A reload of a stopped service would fail: it becomes a start."""
    if action == "reload" and not service_running(name, init):
        action = "start"
    keeps_state = row(name).get("server_state") is True  # the table's: HAProxy
    if keeps_state and action in ("reload", "restart"):
        save_haproxy_state()  # haproxy.py: the new processes keep drains and checks
    elif keeps_state and action == "start":
        remove_quiet(HAPROXY_STATE)  # a stopped HAProxy's last state is stale by now
    argv = ["systemctl", action, name] if init == "systemd" else ["service", name, action]
    code, out = run(argv, timeout=300, detach=True)
    if code == 0 and action in ("start", "restart"):
        enable_service(name, init)
    return code, out, action


def log_tail(name):
    log = row(name).get("error_log")
    path, n = log if isinstance(log, list) and len(log) == 2 else (None, 0)
    if not isinstance(path, str) or not isinstance(n, int) or not os.path.isfile(path):
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return ""
    return ("\n--- last lines of %s ---\n%s" % (path, "\n".join(lines))) if lines else ""

