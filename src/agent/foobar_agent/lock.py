"""The host lock, one run at a time per host: taken at stage, required at commit,
released at the end of the run; a dead run's lock is free at once, and takes that
run's staged files with it."""

import os
import time

from . import paths
from .core import AgentError, RUN_ID_CHARS, chars_ok, fcntl, iso, now
from .files import read_json, write_json_atomic
from .state import cleanup_stage, ensure_state_dir, load_staged, run_dir


class Guard:
    """flock on a side file while the lock file is inspected or changed."""

    def __enter__(self):
        ensure_state_dir()
        self.fd = os.open(paths.GUARD, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def lock_holder_text(lk):
    return "%s (pid %s, started %s, run %s, host %s)" % (
        lk.get("owner", "?"), lk.get("pid", "?"), iso(lk.get("started")), lk.get("run_id", "?"), lk.get("host", "?"))


# The lock itself is the flock on LOCK_HOLD, held by the agent serving the run: the kernel
# frees it when that agent exits, and the agent exits when the tool's connection closes,
# so a lock dies with its holder. lock.json only says who holds it; a lock.json whose
# flock is free is a dead run's, stale at once whatever its age.
HELD_LOCKS = {}  # run id -> the open LOCK_HOLD whose flock this agent holds for the run


def held_locks():
    """The locks this agent holds (the kept agent, daemon.py, replaces this function:
    it keeps one set per connection)."""
    return HELD_LOCKS


def try_hold():
    """LOCK_HOLD opened with its flock taken, or None while another agent holds it."""
    fd = os.open(paths.LOCK_HOLD, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_lock():
    try:
        lk = read_json(paths.LOCK)
    except ValueError:
        return {"unreadable": True}
    return lk if isinstance(lk, dict) else None


def lock_holder_pid():
    """The process holding LOCK_HOLD's flock, from /proc/locks (None when unknown)."""
    try:
        suffix = ":%d" % os.stat(paths.LOCK_HOLD).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].endswith(suffix):
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


def locked_message(lk, agent_pid):
    """A live lock: who holds it, and how to clear it."""
    node = os.uname().nodename
    who = lock_holder_text(lk) if lk and lk.get("run_id") else "a holder that left no lock.json"
    holder = "its agent, pid %s on %s," % (agent_pid, node) if agent_pid else "a process on %s" % node
    end = ("`kill %s` on %s" % (agent_pid, node)) if agent_pid else \
        "ending the process that holds %s on %s (its pid is in /proc/locks)" % (paths.LOCK_HOLD, node)
    return ("host is locked by %s: that run is still in progress (%s holds the lock, which is freed "
            "the moment that agent exits; it exits when its controller's connection closes). Wait for "
            "it to finish (--lock-timeout SECONDS waits that long), or end it: stop that foobar-infra "
            "run, or %s." % (who, holder, end))


def unstage_dead(rid):
    """The staged files of a run whose agent died before it could commit or unstage (its
    lock was just found dead): removed, as that agent would have at the end of its input.
    A run that began its commit is left for `rollback` (its backups are in runs/RID)."""
    if not chars_ok(rid, RUN_ID_CHARS, 64) or os.path.exists(os.path.join(run_dir(rid), "backup.json")):
        return
    record = load_staged(rid)
    if record:
        cleanup_stage(rid, record)


def take_lock(req, rid):
    """Take the host's lock for run `rid` (its flock held by this agent until the run
    releases it or this agent exits) and say so in lock.json. A live lock is never taken
    over: with `lock_wait_s`, wait up to that long for it to be freed."""
    info = req.get("lock") or {}
    try:
        wait = max(0.0, float(req.get("lock_wait_s") or 0))
    except (TypeError, ValueError):
        raise AgentError("request", "lock_wait_s must be a number of seconds")
    mine = {"owner": info.get("owner"), "pid": info.get("pid"), "started": float(info.get("started") or now()),
            "tool_version": info.get("tool_version"), "run_id": rid, "host": os.uname().nodename,
            "agent_pid": os.getpid()}
    held = held_locks()
    deadline = now() + wait
    while True:
        with Guard():
            current = read_lock()
            if rid in held:  # a retried stage of this run
                return current if current and current.get("run_id") == rid else mine
            fd = try_hold()
            if fd is not None:
                try:
                    if current and current.get("run_id") != rid:
                        os.replace(paths.LOCK, paths.LOCK + ".stale")  # its agent is gone: stale at once
                        mine["replaced_stale"] = current
                        unstage_dead(current.get("run_id"))
                    write_json_atomic(paths.LOCK, {k: v for k, v in mine.items() if k != "replaced_stale"})
                except BaseException:
                    os.close(fd)
                    raise
                held[rid] = fd
                return mine
            agent_pid = lock_holder_pid()
        if now() >= deadline:
            raise AgentError("locked", locked_message(current, agent_pid), lock=current)
        time.sleep(max(0.0, min(0.2, deadline - now())))


def release_lock(rid):
    """Free run `rid`'s lock: lock.json removed if it names the run, the flock let go if
    this agent holds it. Returns True if lock.json was removed."""
    held = held_locks()
    if not os.path.isdir(paths.STATE_DIR):
        return False
    removed = False
    with Guard():
        current = read_lock()
        if current and current.get("run_id") == rid:
            os.unlink(paths.LOCK)
            removed = True
        fd = held.pop(rid, None)
        if fd is not None:
            os.close(fd)
    return removed


def require_lock(rid):
    """Run `rid` must hold the lock: this agent holds its flock, or lock.json still names
    the run and the flock is free (the run's first agent is gone; nobody took it since)."""
    held = held_locks()
    with Guard():
        current = read_lock()
        if current and current.get("run_id") == rid:
            if rid in held:
                return
            fd = try_hold()
            if fd is not None:
                held[rid] = fd
                write_json_atomic(paths.LOCK, dict(current, agent_pid=os.getpid()))
                return
    who = lock_holder_text(current) if current and current.get("run_id") else "nobody"
    raise AgentError("locked", "run %s does not hold the lock (held by %s)" % (rid, who), lock=current)

