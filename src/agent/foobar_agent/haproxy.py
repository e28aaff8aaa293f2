"""HAProxy's runtime API: `show stat` for observe and the live check, a server drained
before its application restarts and put back once it answers (haproxy-server), and
the servers' state saved across a reload. A drain also waits for the processes of an
earlier config to finish: they route by their own view of the servers."""

import os
import time

from .core import AgentError, now, pauses, safe_name
from .proc import proc_argv, processes


HAPROXY_SOCKET = "/run/haproxy/admin.sock"
HAPROXY_STATE = "/var/lib/haproxy/server-state"  # server-state-file in haproxy.cfg


def haproxy_cmd(cmd, sock=HAPROXY_SOCKET, limit=None):
    """The runtime API's answer to `cmd`; with `limit`, an answer longer than that many
    bytes is an error (HAProxy's own answer is not trusted to be bounded)."""
    import _socket  # the C module: `socket` costs ~7 ms to import (its enums)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(sock)
        s.sendall((cmd + "\n").encode())
        chunks = []
        size = 0
        while True:
            b = s.recv(65536)
            if not b:
                break
            size += len(b)
            if limit is not None and size > limit:
                raise AgentError("service", "HAProxy's answer to %r is over %d bytes" % (cmd, limit),
                                 service="haproxy")
            chunks.append(b)
    except OSError as e:
        raise AgentError("service", "HAProxy runtime API (%s): %s" % (sock, e), service="haproxy")
    finally:
        s.close()
    return b"".join(chunks).decode("utf-8", "replace")


def haproxy_stat_rows():
    """`show stat` as {(proxy, server or FRONTEND/BACKEND): row}, in HAProxy's order."""
    lines = haproxy_cmd("show stat").splitlines()
    if not lines:
        return {}
    header = lines[0].lstrip("# ").split(",")
    rows = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname"):
            rows[(row["pxname"], row.get("svname"))] = row
    return rows


def haproxy_server_stat(backend, server):
    """(status, current sessions) of one server from `show stat`."""
    row = haproxy_stat_rows().get((backend, server))
    if row is None:
        return None, 0
    return row.get("status"), int(row.get("scur") or 0)


def haproxy_info():
    """`show info` of the running HAProxy as a dict, None when its runtime API is silent."""
    if not os.path.exists(HAPROXY_SOCKET):
        return None
    try:
        out = haproxy_cmd("show info")
    except AgentError:
        return None
    info = {}
    for line in out.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            info[k.strip()] = v.strip()
    return info or None


def haproxy_pid():
    """The pid of the process answering the runtime API, None if silent."""
    pid = (haproxy_info() or {}).get("Pid", "")
    return int(pid) if pid.isdigit() else None


def config_arg(argv):
    """The value of `-f` in an haproxy command line."""
    for i, a in enumerate(argv[:-1]):
        if a == "-f":
            return argv[i + 1]
    return None


def old_haproxy_processes(current, proc="/proc"):
    """The HAProxy processes of an earlier config (same `-f`) still finishing what they
    accepted before a reload (`-sf`, or an old worker of the master): they send those
    requests by their own view of the servers, which a drain over the runtime API (the
    current process's) does not reach. Every such process but `current` and its master."""
    table = processes(proc) if current is not None else {}
    if table.get(current, ("",))[0] != "haproxy":
        return []
    config, master = config_arg(proc_argv(current, proc)), table[current][1]
    return sorted(pid for pid, (name, _) in table.items()
                  if name == "haproxy" and pid not in (current, master)
                  and config_arg(proc_argv(pid, proc)) == config)


def save_haproxy_state():
    """Dump the servers' runtime state where the next HAProxy process loads it from
    (server-state-file): a drained server stays drained across a reload, and a server
    no longer in the running config leaves no stale state behind."""
    if not os.path.exists(HAPROXY_SOCKET):
        return
    try:
        dump = haproxy_cmd("show servers state")
        tmp = HAPROXY_STATE + ".tmp"
        with open(tmp, "w") as f:
            f.write(dump)
        os.replace(tmp, HAPROXY_STATE)
    except (AgentError, OSError):
        pass


def op_haproxy_server(req):
    """Set a server's admin state on this load balancer: `drain` (and wait, bounded, for
    its sessions to end), `ready` (and wait until its health check says UP), `maint`."""
    backend = safe_name(req.get("backend"), "backend")
    server = safe_name(req.get("server"), "server")
    state = req.get("state")
    if state not in ("drain", "ready", "maint"):
        raise AgentError("request", "state must be drain, ready or maint")
    out = haproxy_cmd("set server %s/%s state %s" % (backend, server, state)).strip()
    if "No such server" in out or "No such backend" in out:
        # Not in this balancer's pool (yet): nothing to drain or put back.
        return {"ok": True, "absent": True, "status": None, "sessions": 0}
    if out:
        raise AgentError("service", "HAProxy refused: %s" % out, service="haproxy")
    # Persist runtime state so a reload keeps it (load-server-state-from-file).
    save_haproxy_state()
    deadline, wait = now() + float(req.get("timeout_s", 30)), pauses()
    current, old = haproxy_pid() if state == "drain" else None, []
    while True:
        status, scur = haproxy_server_stat(backend, server)
        if state == "drain" and scur == 0:
            # Its sessions ended here; drained once no process of an earlier config is
            # left that could still send it a request accepted before the reload.
            old = old_haproxy_processes(current)
            if not old:
                break
        if state == "ready" and status and status.startswith("UP"):
            break
        if state == "maint" or now() >= deadline:
            break
        time.sleep(next(wait))
    return {"ok": True, "status": status, "sessions": scur, "old_processes": len(old)}


def haproxy_observe():
    """Every backend server's status and sessions, and every frontend's ({"frontend":
    NAME, "status": OPEN|STOP|FULL, ...}), from the runtime API (None if no socket)."""
    if not os.path.exists(HAPROXY_SOCKET):
        return None
    try:
        rows = haproxy_stat_rows()
    except AgentError as e:
        return {"error": e.message}
    servers = []
    for row in rows.values():
        if row.get("svname") == "FRONTEND":
            servers.append({"frontend": row["pxname"], "status": row.get("status"),
                            "sessions": int(row.get("scur") or 0)})
            continue
        if row.get("svname") in ("BACKEND", None):
            continue
        servers.append({"backend": row["pxname"], "server": row["svname"], "status": row.get("status"),
                        "sessions": int(row.get("scur") or 0), "check": row.get("check_status") or "",
                        "backup": row.get("bck") == "1"})
    return servers

