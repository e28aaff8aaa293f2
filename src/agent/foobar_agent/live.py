"""A reload or restart counts only when the service itself shows the new config running.
The exit code of `systemctl reload` or of an init script is no proof: HAProxy in
master-worker mode exits 0 when its new config fails to load (a port held by another
process), and keeps serving the old one; nginx's master keeps its old workers when a
reload fails. So the agent looks before the action (`live_snapshot`) and after it
(`live_problem`): a new HAProxy process answering its runtime API with the proxies of
the config on disk; new nginx workers under the master; MariaDB answering with the
settings its .cnf asks for. The request's check says which proof applies:
  {"live": "haproxy", "config": PATH, "timeout_s": N}
  {"live": "nginx", "tcp": ["127.0.0.1:80"], "timeout_s": N}
  {"live": "mariadb", "config": PATH, "timeout_s": N}
(sent by the tool, src/services.rs)."""

import time

from .core import AgentError, SEVERE, headline, now, pauses, tail
from .db import run_sql
from .haproxy import HAPROXY_SOCKET, haproxy_info, haproxy_stat_rows
from .proc import capture, processes, run
from .services import log_tail, pid_file, service_pid, service_running


LIVE_KINDS = ("haproxy", "nginx", "mariadb")


def proc_children(ppid):
    """Pids whose parent is ppid."""
    return {pid for pid, (_, parent) in processes().items() if parent == ppid}


def haproxy_config_proxies(path):
    """(frontends, {(proxy, server)} expected in `show stat`) from a haproxy.cfg."""
    frontends, rows, section = [], set(), None
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if raw[0] not in " \t":  # a section header starts in column 0
                section = None
                if words[0] in ("frontend", "backend", "listen") and len(words) > 1:
                    section = (words[0], words[1])
                    if words[0] in ("frontend", "listen"):
                        frontends.append(words[1])
                        rows.add((words[1], "FRONTEND"))
                    if words[0] in ("backend", "listen"):
                        rows.add((words[1], "BACKEND"))
                continue
            if section and section[0] in ("backend", "listen") and words[0] == "server" and len(words) > 1:
                rows.add((section[1], words[1]))
    return frontends, rows


def mariadb_cnf_settings(path):
    """The settings of the [mysqld] section that the server must show once it runs it."""
    want, section = {}, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[] ").lower()
                continue
            if section not in ("mysqld", "mariadb", "server") or "=" not in line:
                continue
            k, _, v = line.partition("=")
            k = k.strip().replace("-", "_").lower()
            if k in ("server_id", "port", "read_only"):
                v = v.strip().upper()
                want[k] = {"ON": "1", "OFF": "0", "TRUE": "1", "FALSE": "0"}.get(v, v)
    return want


def live_snapshot(name, check):
    """What runs before the action, to tell a new process from the old one afterwards."""
    kind = (check or {}).get("live")
    try:
        if kind == "haproxy":
            info = haproxy_info()
            return {"pid": info.get("Pid") if info else None}
        if kind == "nginx":
            master = service_pid(name)
            return {"master": master, "workers": sorted(proc_children(master)) if master else []}
        if kind == "mariadb":
            return {"pid": service_pid(name)}
    except OSError:
        pass
    return {}


def live_problem(name, check, before, action):
    """None when the service runs the config on disk, else what is wrong (one line)."""
    kind = check["live"]
    if kind == "haproxy":
        info = haproxy_info()
        if not info:
            return "HAProxy's runtime API (%s) does not answer" % HAPROXY_SOCKET
        pid = info.get("Pid")
        if action in ("reload", "restart") and before.get("pid") and pid == before["pid"]:
            return ("HAProxy still runs its previous process (pid %s): the new config was not loaded"
                    % pid)
        frontends, want = haproxy_config_proxies(check["config"])
        try:
            have = haproxy_stat_rows()
        except AgentError as e:
            return e.message
        missing = sorted("%s/%s" % r for r in want if r not in have)
        if missing:
            return "HAProxy's running config lacks %s (from %s)" % (", ".join(missing[:5]), check["config"])
        closed = [fe for fe in frontends if have[(fe, "FRONTEND")].get("status") != "OPEN"]
        if closed:
            return "HAProxy's frontend %s is not open" % ", ".join(closed)
        return None
    if kind == "nginx":
        master = service_pid(name)
        if not master:
            return "nginx is not running (no live process behind %s)" % pid_file(name)
        workers = proc_children(master)
        if action == "restart" and master == before.get("master"):
            return "nginx still runs its previous master (pid %s)" % master
        if action == "reload" and master == before.get("master") and not (workers - set(before.get("workers", []))):
            return ("nginx's master (pid %s) started no new workers: the new config was not loaded"
                    % master)
        if not workers:
            return "nginx's master (pid %s) has no worker processes" % master
        for addr in check.get("tcp") or []:
            host, _, port = addr.rpartition(":")
            try:
                tcp_connect(host.strip("[]") or "127.0.0.1", int(port), 2.0)
            except (OSError, ValueError) as e:
                return "nginx does not answer on %s: %s" % (addr, e)
        return None
    if kind == "mariadb":
        pid = service_pid(name)
        if not pid:
            return "%s is not running (no live process behind %s)" % (name, pid_file(name))
        if action == "restart" and before.get("pid") == pid:
            return "%s still runs its previous process (pid %s)" % (name, pid)
        want = mariadb_cnf_settings(check["config"])
        keys = sorted(want)
        if not keys:
            return None
        try:
            rows = run_sql("SELECT %s" % ", ".join("@@" + k for k in keys), timeout=10)
        except AgentError as e:
            return "%s does not answer: %s" % (name, e.message.splitlines()[0] if e.message else e)
        got = dict(zip(keys, rows[0] if rows else []))
        wrong = ["%s is %s, not %s" % (k, got.get(k), want[k]) for k in keys if str(got.get(k)) != want[k]]
        if wrong:
            return "%s runs other settings than %s: %s" % (name, check["config"], "; ".join(wrong))
        return None
    return "unknown live check %r" % kind


def service_message(name, since, init):
    """The service's own words since `since`: its log file (nginx's master writes a failed
    reload there), then on systemd its journal."""
    said = log_tail(name)
    if init == "systemd":
        code, out, _ = capture(["journalctl", "--no-pager", "-o", "cat", "-n", "20", "-u", name,
                                "--since", "@%d" % int(since)], timeout=10)
        lines = [l for l in out.splitlines() if l.strip()]
        if code == 0 and lines:
            said += "\n--- journalctl -u %s ---\n%s" % (name, "\n".join(lines))
    return said


def severe_line(text):
    """The first error-looking line of text, without timestamp/pid prefixes ("" if none)."""
    lines = [l for l in text.splitlines() if SEVERE.search(l) and not l.startswith("---")]
    return headline(lines[0]) if lines else ""


def live_confirm(name, check, before, action, since, init, out=""):
    """Poll until the service shows the new config (None), or the deadline: the problem
    with the service's own message (its journal or log, or what the action printed)."""
    deadline, wait = now() + float(check.get("timeout_s", 15)), pauses()
    while True:
        problem = live_problem(name, check, before, action)
        if not problem or now() >= deadline:
            break
        time.sleep(next(wait))
    if not problem:
        return None
    said = service_message(name, since, init)
    best = severe_line(said) or severe_line(out)
    return ("%s (%s says: %s)" % (problem, name, best) if best else problem) + said


def run_check(name, check, init, before=None, action=None, since=0.0, out=""):
    """Poll a health check (validated by check_actions). None on success, else what failed.
    A "live" check (live.py) compares what runs after the action with `before`."""
    if not check:
        return None
    if "live" in check:
        return live_confirm(name, check, before or {}, action, since, init, out)
    if "tcp" in check:
        deadline, wait = now() + float(check.get("timeout_s", 10)), pauses()
        host, _, port = str(check["tcp"]).rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        last = ""
        while True:
            try:
                tcp_connect(host, int(port), max(0.2, min(2.0, deadline - now())))
                return None
            except (OSError, ValueError) as e:
                last = str(e)
            if now() >= deadline:
                return "no TCP connection to %s within %ss: %s" % (check["tcp"], check.get("timeout_s", 10), last)
            time.sleep(next(wait))
    if "command" in check:
        argv = check["command"]
        deadline, wait = now() + float(check.get("timeout_s", 30)), pauses()
        while True:
            code, out = run(argv, timeout=max(1.0, min(10.0, deadline - now())))
            if code == 0:
                return None
            if now() >= deadline:
                return "check %s exited %s within %ss:\n%s" % (" ".join(argv), code, check.get("timeout_s", 30), tail(out, 2000))
            time.sleep(next(wait))
    deadline, wait = now() + float(check.get("timeout_s", 10)), pauses()  # {"running": true}
    while not service_running(name, init):
        if now() >= deadline:
            return "%s is not running after %ss" % (name, check.get("timeout_s", 10))
        time.sleep(next(wait))
    return None


def tcp_connect(host, port, timeout):
    """Open and close a TCP connection (the socket module costs ~7 ms to import)."""
    import _socket
    last = OSError("no address for %s" % host)
    for family, kind, proto, _, addr in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        s = _socket.socket(family, kind, proto)
        try:
            s.settimeout(timeout)
            s.connect(addr)
            return
        except OSError as e:
            last = e
        finally:
            s.close()
    raise last
