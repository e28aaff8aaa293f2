"""foobar-infra remote agent.

Run on a managed host as ONE ssh exec: `python3 -c <this script>` (or
`sudo -n python3 -c <this script>`). Reads one JSON request on stdin, writes one
JSON answer on stdout, exits 0 whenever an answer was written (non-zero with a
traceback on stderr only when the agent itself crashed).

This script owns, on the host:
  * /var/lib/foobar-infra/ (0700): lock.flock, lock.json, manifest.json, history.jsonl,
    runs/RUNID/{staged.json, backup.json, backup/..., manifest.prev.json};
  * staged files `TARGET.foobar-new-RUNID` beside their targets, nginx test trees
    `ROOT/.foobar-stage-RUNID/`, and the target files the tool manages;
  * the service actions (reload/restart/start) and their health checks.

Operations: observe, stage, abort, commit, rollback (see docs/DESIGN.md, "Remote
agent protocol"). Python 3.9+ stdlib only. No secret ever goes into a child
process's argv or environment: file contents arrive base64 in the request and
are written to files; subprocess output never goes to our own stdout.
"""

import grp
import json  # every request and answer (it brings `re`); BENCHMARKS.md has the cost
import os
import pwd
import stat
import sys
import time


class _Lazy:
    """A module imported on first use: a no-op observe never pays for what only
    staging, committing or the database need. Imports are most of its cost: on the lab
    (containers on fuse-overlayfs) `re` alone costs ~14 ms."""

    def __init__(self, name):
        self._name, self._module = name, None

    def __getattr__(self, attr):
        if self._module is None:
            __import__(self._name)
            self._module = sys.modules[self._name]
        return getattr(self._module, attr)


class Pattern:
    """A regular expression compiled (and `re` imported) on its first use."""

    def __init__(self, pattern, flags=0):
        self.pattern, self.flags, self._re = pattern, flags, None

    def __getattr__(self, attr):
        if self._re is None:
            self._re = re.compile(self.pattern, self.flags)
        return getattr(self._re, attr)


def chars_ok(s, allowed, maxlen, first=None):
    """s is 1..maxlen characters of `allowed` (its first one of `first`): the names the
    observe path checks, without importing `re`."""
    return (isinstance(s, str) and 0 < len(s) <= maxlen and (first is None or s[0] in first)
            and all(c in allowed for c in s))


ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


hashlib = _Lazy("hashlib")  # not _sha256 (gone in 3.12): OpenSSL loads only where something is hashed
re = _Lazy("re")
datetime = _Lazy("datetime")
fcntl = _Lazy("fcntl")
shutil = _Lazy("shutil")
socket = _Lazy("socket")
subprocess = _Lazy("subprocess")
tempfile = _Lazy("tempfile")
traceback = _Lazy("traceback")

STATE_DIR = "/var/lib/foobar-infra"
LOCK = os.path.join(STATE_DIR, "lock.json")
LOCK_HOLD = os.path.join(STATE_DIR, "lock.flock")  # the lock: its flock (see take_lock)
GUARD = os.path.join(STATE_DIR, ".lock-guard")
MANIFEST = os.path.join(STATE_DIR, "manifest.json")
HISTORY = os.path.join(STATE_DIR, "history.jsonl")
RUNS = os.path.join(STATE_DIR, "runs")
AGENT_CACHE = os.path.join(STATE_DIR, "agent")  # written by the bootstrap (src/remote/agent.rs)
KEEP_RUNS = 10
PIDFILES = {
    "foobar-app": "/run/foobar-app.pid",
    "nginx": "/run/nginx.pid",
    "haproxy": "/run/haproxy.pid",
    "mariadb": "/run/mysqld/mysqld.pid",
    "mysql": "/run/mysqld/mysqld.pid",
    "keepalived": "/run/keepalived.pid",
    "prometheus": "/run/prometheus/prometheus.pid",
    "prometheus-node-exporter": "/run/prometheus/prometheus-node-exporter.pid",
    "prometheus-nginx-exporter": "/run/prometheus/prometheus-nginx-exporter.pid",
    "prometheus-mysqld-exporter": "/run/prometheus/prometheus-mysqld-exporter.pid",
    "prometheus-blackbox-exporter": "/run/prometheus/prometheus-blackbox-exporter.pid",
}
ERROR_LOGS = {
    "nginx": ("/var/log/nginx/error.log", 5),
    "mariadb": ("/var/log/mysql/error.log", 10),
    "mysql": ("/var/log/mysql/error.log", 10),
}
RUN_ID_CHARS = ALNUM | frozenset("_-")  # no dots: a staged name must never end in .conf/.cnf
NAME_CHARS = ALNUM | frozenset("@_.+:-")  # services and packages: [A-Za-z0-9][A-Za-z0-9@_.+:-]{0,127}


def name_ok(n):
    return chars_ok(n, NAME_CHARS, 128, first=ALNUM)
OUTPUT_TAIL = 8000


class AgentError(Exception):
    def __init__(self, kind, message, path=None, service=None, output=None, **extra):
        Exception.__init__(self, message)
        self.kind, self.message = kind, message
        self.path, self.service, self.output, self.extra = path, service, output, extra

    def answer(self):
        err = {"kind": self.kind, "message": self.message}
        for key in ("path", "service", "output"):
            if getattr(self, key) is not None:
                err[key] = getattr(self, key)
        err.update(self.extra)
        return {"ok": False, "error": err}


# ---------------------------------------------------------------- helpers

def now():
    return time.time()


def iso(ts):
    try:
        return datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def tail(text, limit=OUTPUT_TAIL):
    return text if len(text) <= limit else "...\n" + text[-limit:]


def child_env():
    env = dict(os.environ)
    path = env.get("PATH", "")
    for extra in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if extra not in path.split(":"):
            path = (path + ":" + extra) if path else extra
    env.update(PATH=path, LC_ALL="C", LANG="C")
    return env


def spawn(argv, env, actions, setsid=False):
    """posix_spawn argv (searched in PATH) with file actions; the pid. Not the subprocess
    module: with what it imports it costs each agent ~9 ms."""
    import _signal
    return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=setsid,
                           setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))  # as subprocess does


def wait_exit(pid, timeout):
    """The exit code of pid, or -1 (killed) when it runs longer than timeout seconds."""
    deadline = now() + timeout
    try:
        pidfd = os.pidfd_open(pid)  # wakes up at the exit itself (Linux 5.3+)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            left = deadline - now()
            if left <= 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return -1
            if pidfd is not None:
                import select
                p = select.poll()
                p.register(pidfd, select.POLLIN)
                p.poll(left * 1000)
            else:
                time.sleep(min(0.01, left))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def anonymous_file():
    """A read-write file without a name (the output of run())."""
    try:
        return os.open("/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):  # e.g. overlay file systems: a name, unlinked at once
        for _ in range(100):
            path = "/tmp/.foobar-out-%s" % os.urandom(8).hex()
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            os.unlink(path)
            return fd
        raise OSError("cannot create a temporary file in /tmp")


def run(argv, timeout=120, env_extra=None, detach=False):
    """Run argv, return (exit code, combined output). Output goes through a temp
    file, never a pipe: daemons started by init scripts inherit the child's fds and
    would hold a pipe (and the ssh channel) open forever."""
    env = child_env()
    if env_extra:
        env.update(env_extra)
    out = anonymous_file()
    try:
        try:
            pid = spawn(argv, env, [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                    (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)],
                        setsid=detach)
        except FileNotFoundError:
            return 127, "%s: command not found" % argv[0]
        code = wait_exit(pid, timeout)
        size = os.lseek(out, 0, os.SEEK_END)
        text = os.pread(out, size, 0).decode("utf-8", "replace")
    finally:
        os.close(out)
    if code == -1:
        text += "\n(timed out after %ss)" % timeout
    return code, text


def capture(argv, data=None, timeout=120):
    """Run a short-lived command (never one that starts a daemon: it would hold the
    pipes) with pipes: returns (code, stdout, stderr) as soon as it exits. Spawned with
    posix_spawn and read with poll, not the subprocess module: importing that costs a
    no-op observe ~9 ms of its ~60."""
    import select  # a builtin module: nothing to load
    fds = []
    try:
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        fds = [r_out, w_out, r_err, w_err]
        if data is not None:
            r_in, w_in = os.pipe()
            fds += [r_in, w_in]
            stdin_action = (os.POSIX_SPAWN_DUP2, r_in, 0)
        else:
            stdin_action = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
        try:
            pid = spawn(argv, child_env(), [stdin_action, (os.POSIX_SPAWN_DUP2, w_out, 1),
                                            (os.POSIX_SPAWN_DUP2, w_err, 2)])
        except FileNotFoundError:
            return 127, "", "%s: command not found" % argv[0]
        for fd in (w_out, w_err) + ((r_in,) if data is not None else ()):
            os.close(fd)
            fds.remove(fd)
        chunks = {r_out: [], r_err: []}
        poll = select.poll()
        for fd in chunks:
            poll.register(fd, select.POLLIN)
        pending = memoryview(data or b"")
        if data is not None:
            os.set_blocking(w_in, False)
            poll.register(w_in, select.POLLOUT)
        open_fds = len(chunks) + (data is not None)
        deadline = now() + timeout
        timed_out = False
        while open_fds:
            left = deadline - now()
            if left <= 0:
                timed_out = True
                os.kill(pid, 9)
                break
            for fd, ev in poll.poll(left * 1000):
                if data is not None and fd == w_in:
                    try:
                        pending = pending[os.write(w_in, pending[:65536]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        poll.unregister(w_in)
                        os.close(w_in)
                        fds.remove(w_in)
                        open_fds -= 1
                    continue
                b = os.read(fd, 65536)
                if b:
                    chunks[fd].append(b)
                else:
                    poll.unregister(fd)
                    open_fds -= 1
        status = os.waitpid(pid, 0)[1]
        code = -1 if timed_out else os.waitstatus_to_exitcode(status)
        out, err = (b"".join(chunks[fd]).decode("utf-8", "replace") for fd in (r_out, r_err))
        return code, out, err + ("\n(timed out)" if timed_out else "")
    finally:
        for fd in fds:
            os.close(fd)


def run_split(argv, timeout=120):
    """Like run() but returns (code, stdout, stderr) separately."""
    return capture(argv, timeout=timeout)


def quiet(argv, timeout=30):
    code, _, _ = capture(argv, timeout=timeout)
    return 0 if code == 0 else 1


def safe_path(p, what="path"):
    if not isinstance(p, str) or not p.startswith("/") or "\0" in p or p == "/":
        raise AgentError("request", "%s must be an absolute file path: %r" % (what, p), path=str(p))
    parts = p.split("/")
    if ".." in parts or "." in parts or "" in parts[1:]:
        raise AgentError("request", "%s must be a normalised path without '..': %r" % (what, p), path=p)
    if p == STATE_DIR or p.startswith(STATE_DIR + "/"):
        raise AgentError("request", "%s is inside the agent's state directory: %s" % (what, p), path=p)
    return p


def safe_name(n, what):
    if not name_ok(n):
        raise AgentError("request", "invalid %s name: %r" % (what, n))
    return n


def run_id_of(req):
    rid = req.get("run_id")
    if not chars_ok(rid, RUN_ID_CHARS, 64):
        raise AgentError("request", "run_id must be 1-64 of [A-Za-z0-9_-]: %r" % (rid,))
    return rid


def parse_mode(m, default=0o644):
    if m is None:
        return default
    try:
        v = int(m, 8) if isinstance(m, str) else int(m)
    except ValueError:
        raise AgentError("request", "invalid mode %r (want an octal string like \"0644\")" % (m,))
    if not 0 <= v <= 0o7777:
        raise AgentError("request", "mode out of range: %r" % (m,))
    return v


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def live_sha(path):
    """sha256 of the file's bytes (following a symlink); None if absent or not a regular file."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "(not a regular file)"
        return sha256_file(path)
    except FileNotFoundError:
        return "(dangling symlink)" if os.path.islink(path) else None


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def file_info(path, desired=None, max_content=0, want_content=False):
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    info = {"exists": True}
    st = lst
    if stat.S_ISLNK(lst.st_mode):
        info["link"] = os.readlink(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            info["dangling"] = True
            return info
    info.update(mode="%04o" % stat.S_IMODE(st.st_mode), owner=user_name(st.st_uid),
                group=group_name(st.st_gid), size=st.st_size)
    if not stat.S_ISREG(st.st_mode):
        info.update(sha256=None, type="directory" if stat.S_ISDIR(st.st_mode) else "other")
        return info
    with open(path, "rb") as f:
        data = f.read(max_content + 1) if want_content else b""
        h = hashlib.sha256(data)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    info["sha256"] = h.hexdigest()
    if want_content and info["sha256"] != desired:
        if len(data) <= max_content:
            info["content_b64"] = b64encode(data)
        else:
            info["content_too_large"] = True
    return info


def read_json(path, default=None):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def json_lines(obj):
    """JSON of obj, a list one element per line (readable, and no `json` import)."""
    if isinstance(obj, list) and obj:
        return "[\n" + ",\n".join(json.dumps(e, sort_keys=True) for e in obj) + "\n]"
    return json.dumps(obj, sort_keys=True)


def write_json_atomic(path, obj, mode=0o600):
    d = os.path.dirname(path)
    tmp = os.path.join(d, ".tmp-%d-%d" % (os.getpid(), int(now() * 1e6)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json_lines(obj))
            f.write("\n")
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def ensure_state_dir():
    os.makedirs(RUNS, mode=0o700, exist_ok=True)
    for d in (STATE_DIR, RUNS):
        if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
            os.chmod(d, 0o700)


def run_dir(rid):
    return os.path.join(RUNS, rid)


def last_history():
    try:
        with open(HISTORY, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = [l for l in f.read().splitlines() if l.strip()]
    except FileNotFoundError:
        return None
    if not lines:
        return None
    try:
        return json.loads(lines[-1].decode("utf-8"))
    except ValueError:
        return None


def append_history(record, result, error=None):
    if not isinstance(record, dict):
        return
    rec = dict(record)
    rec.update(result=result, finished=now(), host=os.uname().nodename)
    if error is not None:
        rec["error"] = error
    line = (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8")
    ensure_state_dir()
    fd = os.open(HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_preserving(src, dst):
    """Copy src to dst (a symlink stays a symlink) with mode and ownership."""
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    if os.path.lexists(dst):
        os.unlink(dst)
    st = os.lstat(src)
    copy_file(src, dst, st)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def copy_file(src, dst, st=None):
    """Copy src's bytes (or, for a symlink, the link) to a new dst with src's mode and
    times, as shutil.copy2(follow_symlinks=False) does (shutil imports re via fnmatch)."""
    st = st or os.lstat(src)
    if os.path.lexists(dst):
        os.unlink(dst)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return
    fd_in = os.open(src, os.O_RDONLY)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while os.sendfile(fd_out, fd_in, None, 1 << 30):
                pass
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def restore_file(backup, target, tag):
    """Put a backed-up file back over target atomically (copy beside it, then rename)."""
    tmp = "%s.foobar-restore-%s" % (target, tag)
    copy_preserving(backup, tmp)
    os.replace(tmp, target)


def remove_quiet(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            for root, dirs, files in os.walk(path, topdown=False):  # shutil would import re
                for f in files:
                    os.unlink(os.path.join(root, f))
                for d in dirs:
                    sub = os.path.join(root, d)
                    os.unlink(sub) if os.path.islink(sub) else os.rmdir(sub)
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- lock

class Guard:
    """flock on a side file while the lock file is inspected or changed."""

    def __enter__(self):
        ensure_state_dir()
        self.fd = os.open(GUARD, os.O_RDWR | os.O_CREAT, 0o600)
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
    """The locks this agent holds (the kept agent, daemon.py, keeps one set per connection)."""
    return HELD_LOCKS


def try_hold():
    """LOCK_HOLD opened with its flock taken, or None while another agent holds it."""
    fd = os.open(LOCK_HOLD, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
        lk = read_json(LOCK)
    except ValueError:
        return {"unreadable": True}
    return lk if isinstance(lk, dict) else None


def lock_holder_pid():
    """The process holding LOCK_HOLD's flock, from /proc/locks (None when unknown)."""
    try:
        suffix = ":%d" % os.stat(LOCK_HOLD).st_ino
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
        "ending the process that holds %s on %s (its pid is in /proc/locks)" % (LOCK_HOLD, node)
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
                        os.replace(LOCK, LOCK + ".stale")  # its agent is gone: stale at once
                        mine["replaced_stale"] = current
                        unstage_dead(current.get("run_id"))
                    write_json_atomic(LOCK, {k: v for k, v in mine.items() if k != "replaced_stale"})
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
    if not os.path.isdir(STATE_DIR):
        return False
    removed = False
    with Guard():
        current = read_lock()
        if current and current.get("run_id") == rid:
            os.unlink(LOCK)
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
                write_json_atomic(LOCK, dict(current, agent_pid=os.getpid()))
                return
    who = lock_holder_text(current) if current and current.get("run_id") else "nobody"
    raise AgentError("locked", "run %s does not hold the lock (held by %s)" % (rid, who), lock=current)


# ---------------------------------------------------------------- services

def init_system():
    return "systemd" if os.path.isdir("/run/systemd/system") else "sysv"


def service_running(name, init):
    if init == "systemd":
        return quiet(["systemctl", "is-active", "--quiet", name]) == 0
    # A live process behind the service's pidfile answers without running its init
    # script (tens of milliseconds each); otherwise ask the script.
    if service_pid(name):
        return True
    return quiet(["service", name, "status"]) == 0


def service_pid(name):
    pf = PIDFILES.get(name)
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
    if name == "haproxy" and action in ("reload", "restart"):
        save_haproxy_state()  # release.py: the new processes keep drains and checks
    elif name == "haproxy" and action == "start":
        remove_quiet(HAPROXY_STATE)  # a stopped HAProxy's last state is stale by now
    argv = ["systemctl", action, name] if init == "systemd" else ["service", name, action]
    code, out = run(argv, timeout=300, detach=True)
    if code == 0 and action in ("start", "restart"):
        enable_service(name, init)
    return code, out, action


def enable_service(name, init):
    """Start at boot (boot.py), also when it was disabled (`update-rc.d NAME disable`,
    `systemctl disable`); nothing when it already starts at boot. Best effort: the
    next observe reports a service that is still off at boot."""
    if init == "systemd" or os.path.exists(os.path.join(INIT_D, name)):
        if boot_enabled([name], init).get(name) is not True:
            set_boot(name, True, init)


def run_check(name, check, init, before=None, action=None, since=0.0, out=""):
    """Poll a health check (validated by check_actions). None on success, else what failed.
    A "live" check (live.py) compares what runs after the action with `before`."""
    if not check:
        return None
    if "live" in check:
        return live_confirm(name, check, before or {}, action, since, init, out)
    if "tcp" in check:
        deadline = now() + float(check.get("timeout_s", 10))
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
            time.sleep(0.2)
    if "command" in check:
        argv = check["command"]
        deadline = now() + float(check.get("timeout_s", 30))
        while True:
            code, out = run(argv, timeout=max(1.0, min(10.0, deadline - now())))
            if code == 0:
                return None
            if now() >= deadline:
                return "check %s exited %s within %ss:\n%s" % (" ".join(argv), code, check.get("timeout_s", 30), tail(out, 2000))
            time.sleep(0.2)
    deadline = now() + float(check.get("timeout_s", 10))  # {"running": true}
    while not service_running(name, init):
        if now() >= deadline:
            return "%s is not running after %ss" % (name, check.get("timeout_s", 10))
        time.sleep(0.2)
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


def b64encode(data):
    import binascii  # builtin; the base64 module would import re
    return binascii.b2a_base64(data, newline=False).decode("ascii")


B64_CHARS = ALNUM | frozenset("+/=")


def b64decode(text):
    """Strict base64 (as base64.b64decode(validate=True)): ValueError on anything else."""
    import binascii
    if not isinstance(text, str) or not all(c in B64_CHARS for c in text):
        raise ValueError("not base64")
    try:
        return binascii.a2b_base64(text)
    except binascii.Error as e:
        raise ValueError(str(e))


def log_tail(name):
    path, n = ERROR_LOGS.get(name, (None, 0))
    if not path or not os.path.isfile(path):
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return ""
    return ("\n--- last lines of %s ---\n%s" % (path, "\n".join(lines))) if lines else ""


# ---------------------------------------------------------------- observe

def dpkg_installed(pkgs):
    if not pkgs:
        return {}
    # dpkg keeps a file list for each installed package: reading the directory is
    # much faster than starting dpkg-query.
    info = "/var/lib/dpkg/info"
    if os.path.isdir(info):
        names = set(os.listdir(info))
        arch = os.uname().machine.replace("x86_64", "amd64").replace("aarch64", "arm64")
        return {p: (p + ".list") in names or ("%s:%s.list" % (p, arch)) in names for p in pkgs}
    code, out, _ = run_split(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"] + list(pkgs))
    status = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            status[parts[0]] = status.get(parts[0], False) or parts[1] == "installed"
    return {p: status.get(p.split(":")[0], False) for p in pkgs}


def op_observe(req):
    paths = req.get("paths") or {}
    if not isinstance(paths, dict):
        raise AgentError("request", "paths must be an object {PATH: SHA256|null}")
    for p in paths:
        safe_path(p)
    services = [safe_name(s, "service") for s in req.get("services") or []]
    packages = [safe_name(p, "package") for p in req.get("packages") or []]
    max_content = int(req.get("max_content", 1 << 20))
    init = init_system()

    try:
        manifest = read_json(MANIFEST, []) or []
    except ValueError:
        manifest = []
    try:
        lock = read_json(LOCK)
    except ValueError:
        lock = {"unreadable": True}

    files = {}
    for p, desired in paths.items():
        files[p] = file_info(p, desired, max_content, want_content=True)
    for entry in manifest:
        p = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(p, str) and p not in files:
            files[p] = file_info(p)

    # The services of files managed earlier too: a role taken off stops its service.
    for entry in manifest:
        svc = entry.get("service") if isinstance(entry, dict) else None
        if name_ok(svc) and svc not in services:
            services.append(svc)
    db = db_observe(req["db"]) if req.get("db") else None  # defined in db.py
    # A database host no longer planned as one: is it still a replica? (Only where the
    # tool managed a database config, and only while the server runs.)
    former_replica = None
    if db is None and any(isinstance(e, dict) and e.get("service") in ("mariadb", "mysql") for e in manifest) \
            and any(service_running(n, init) for n in ("mariadb", "mysql")):
        try:
            former_replica = replica_status()
        except AgentError:
            former_replica = None
    release = release_observe(req["release"]) if req.get("release") else None  # release.py
    users = {u: user_exists(u) for u in req.get("users") or []}  # release.py
    balancer = haproxy_observe() if req.get("haproxy") else None  # release.py
    certs = {safe_path(c, "certs"): cert_not_after(c) for c in req.get("certs") or []}  # release.py
    boot = boot_enabled(services, init)  # boot.py
    listeners = listeners_observe(req.get("ports") or [], init)  # ports.py
    return {
        "ok": True, "init": init, "hostname": os.uname().nodename, "files": files, "db": db, "release": release, "users": users, "haproxy": balancer, "certs": certs,
        "services": {s: {"running": service_running(s, init), "pid": service_pid(s), "enabled": boot.get(s)}
                     for s in services},
        "packages": dpkg_installed(packages), "lock": lock, "manifest": manifest,
        "last_history": last_history(), "former_replica": former_replica, "listeners": listeners,
    }


# ---------------------------------------------------------------- stage

def staged_name(path, rid):
    return "%s.foobar-new-%s" % (path, rid)


def make_parents(path, created):
    """Create missing parent directories (0755, root), recording them outermost first."""
    missing = []
    d = os.path.dirname(path)
    while not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        created.append(d)


def write_staged(entry, rid, record, save):
    path = entry["path"]
    try:
        data = b64decode(entry.get("content_b64", ""))
    except (ValueError, TypeError):
        raise AgentError("request", "content_b64 of %s is not valid base64" % path, path=path)
    mode = parse_mode(entry.get("mode"))
    try:
        uid = pwd.getpwnam(entry.get("owner") or "root").pw_uid
        gid = grp.getgrnam(entry.get("group") or "root").gr_gid
    except KeyError as e:
        raise AgentError("io", "unknown owner/group for %s: %s" % (path, e), path=path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise AgentError("request", "%s is a directory on the host" % path, path=path)
    make_parents(path, record["dirs"])
    new = staged_name(path, rid)
    record["files"].append({"path": path, "staged": new, "service": entry.get("service"),
                            "sha256": hashlib.sha256(data).hexdigest()})
    save()  # recorded before it exists, so a crash can always be cleaned up
    if os.path.lexists(new):
        os.unlink(new)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def cleanup_stage(rid, record):
    for f in record.get("files", []):
        remove_quiet(f["staged"])
    for d in record.get("stage_dirs", []):
        remove_quiet(d)
    for d in reversed(record.get("dirs", [])):
        try:
            os.rmdir(d)
        except OSError:
            pass
    remove_quiet(run_dir(rid))


def validator_argv(kind, f):
    return {
        # not -q: HAProxy 2.6's -q also hides the [ALERT] lines that say what is wrong
        "haproxy": ["haproxy", "-c", "-f", f],
        "mariadb": ["mariadbd", "--defaults-file=" + f, "--help", "--verbose"],
        "mysql8": ["mysqld", "--defaults-file=" + f, "--validate-config"],
        "nft": ["nft", "-c", "-f", f],
        "keepalived": ["keepalived", "-t", "-f", f],
        "prometheus": ["promtool", "check", "config", f],
        "blackbox": ["prometheus-blackbox-exporter", "--config.check", "--config.file=" + f],
    }[kind]


SERVICE_OF_KIND = {"nginx": "nginx", "haproxy": "haproxy", "mariadb": "mariadb", "mysql8": "mysql",
                   "nft": "nftables", "keepalived": "keepalived", "prometheus": "prometheus",
                   "blackbox": "prometheus-blackbox-exporter"}


def validate_one(v, rid, staged, record, save):
    kind = v.get("kind")
    service = v.get("service") or SERVICE_OF_KIND.get(kind, kind)
    if kind == "nginx":
        root = safe_path(v.get("root", "/etc/nginx"), "validate.root")
        conf = safe_path(v.get("conf", root + "/nginx.conf"), "validate.conf")
        files = [safe_path(p, "validate.files") for p in v.get("files") or []]
        if conf not in files:
            files.append(conf)
        files = [p for p in files if p not in record.get("deletes", [])]
        for p in files:
            if not p.startswith(root + "/"):
                raise AgentError("request", "%s is not under the nginx root %s" % (p, root), path=p)
        stage = os.path.join(root, ".foobar-stage-%s" % rid)
        record["stage_dirs"].append(stage)
        save()
        try:
            remove_quiet(stage)
            os.mkdir(stage, 0o700)
            for p in files:
                src = staged.get(p, p)
                if not os.path.exists(src):
                    continue  # a listed file that is neither staged nor live: nginx reports it if needed
                dst = os.path.join(stage, os.path.relpath(p, root))
                os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
                copy_file(src, dst, os.stat(src))
            code, out = run(["nginx", "-t", "-q", "-c", os.path.join(stage, os.path.relpath(conf, root))], timeout=60)
        finally:
            remove_quiet(stage)
        out = out.replace(stage + "/", root + "/").replace(stage, root)
        ok, target = code == 0, conf
    elif kind in ("haproxy", "mariadb", "mysql8", "nft", "keepalived", "prometheus", "blackbox"):
        target = safe_path(v.get("path"), "validate.path")
        f = staged.get(target, target)
        if not os.path.exists(f):
            raise AgentError("validation", "%s: nothing to validate, %s does not exist" % (kind, target),
                             path=target, service=service)
        if kind == "mariadb":
            code, _stdout, err = run_split(validator_argv(kind, f), timeout=60)
            bad = [l for l in err.splitlines() if "[ERROR]" in l or "adjusted" in l]
            ok, out = code == 0 and not bad, err
            if code == 0 and bad:
                out = "\n".join(bad)
        elif kind in ("haproxy", "keepalived", "prometheus"):
            # The config may name files staged in this run (a certificate): check a copy
            # that points at the staged versions, since the live ones do not exist yet.
            with open(f) as fh:
                text = fh.read()
            copy = None
            for p, sp in staged.items():
                if p != target and p in text:
                    text = text.replace(p, sp)
                    copy = f + ".check"
            if copy:
                with open(copy, "w") as fh:
                    fh.write(text)
                os.chmod(copy, 0o600)
            try:
                code, out = run(validator_argv(kind, copy or f), timeout=60)
            finally:
                if copy:
                    remove_quiet(copy)
            if copy:
                out = out.replace(copy, target)
            ok = code == 0
            out = "\n".join(l for l in out.splitlines()
                            if not l.startswith("[NOTICE]") and l.strip() != "Configuration file is valid")
        else:
            code, out = run(validator_argv(kind, f), timeout=60)
            ok = code == 0
            if kind == "haproxy":
                out = "\n".join(l for l in out.splitlines()
                                if not l.startswith("[NOTICE]") and l.strip() != "Configuration file is valid")
    else:
        raise AgentError("request", "unknown validate kind %r" % (kind,))
    for p, s in staged.items():
        out = out.replace(s, p)
    if not ok:
        line = headline(out) or "exit status %s" % code
        if kind == "nginx":  # name the file nginx complains about when it is one of ours
            m = re.search(r" in (/\S+?):\d+", line)
            if m and m.group(1) in files:
                target = m.group(1)
        raise AgentError("validation", "%s rejected %s: %s" % (kind, target, line),
                         path=target, service=service, output=tail(out.strip()))
    return {"kind": kind, "path": target}


LOG_PREFIXES = (  # nginx, MariaDB and HAProxy line prefixes that only add noise to a headline
    (Pattern(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: "), r"\1 "),
    (Pattern(r"^\d{4}-\d\d-\d\d +\d+:\d\d:\d\d \d+ "), ""),
    (Pattern(r"^\[(ALERT|WARNING)\] +\(\d+\) : "), ""),
)
SEVERE = Pattern(r"\[(emerg|crit|alert|error|ERROR|ALERT)\]|adjusted|error", 2)  # re.I


def headline(out):
    """The most telling line of a validator's output, without timestamp/pid prefixes."""
    lines = [l.strip() for l in out.splitlines() if l.strip()]
    best = next((l for l in lines if SEVERE.search(l)), lines[0] if lines else "")
    for rx, repl in LOG_PREFIXES:
        best = rx.sub(repl, best)
    return best


def install_packages(pkgs):
    missing = [p for p, ok in dpkg_installed(pkgs).items() if not ok]
    if not missing:
        return []
    argv = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
            "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"] + missing
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    code, out = run(argv, timeout=1800, env_extra=env)
    if code != 0 and ("Unable to locate package" in out or "has no installation candidate" in out):
        ucode, uout = run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=120"], timeout=600, env_extra=env)
        code, out2 = run(argv, timeout=1800, env_extra=env)
        out = out + "\n--- apt-get update (exit %s) ---\n%s\n--- retry ---\n%s" % (ucode, tail(uout, 2000), out2)
    if code != 0:
        raise AgentError("install", "apt-get install %s failed (exit %s)" % (" ".join(missing), code),
                         output=tail(out, 4000))
    return missing


def op_stage(req):
    rid = run_id_of(req)
    files = req.get("files") or []
    for f in files:
        if not isinstance(f, dict):
            raise AgentError("request", "files entries must be objects")
        safe_path(f.get("path"))
        parse_mode(f.get("mode"))
    targets = [f["path"] for f in files]
    if len(set(targets)) != len(targets):
        raise AgentError("request", "a path is listed twice in files")
    deletes = [safe_path(p, "deletes") for p in req.get("deletes") or []]
    expect = req.get("expect") or {}
    for p in expect:
        safe_path(p, "expect")
    install = [safe_name(p, "package") for p in req.get("install") or []]
    validate = req.get("validate") or []
    history = req.get("history")

    if os.path.exists(os.path.join(run_dir(rid), "backup.json")):
        raise AgentError("request", "run %s was already committed on this host" % rid)
    ensure_state_dir()
    # A run refused by another's lock touched nothing here and writes no history
    # (it does not hold the lock that guards history.jsonl).
    taken = take_lock(req, rid)
    record = {"run_id": rid, "files": [], "dirs": [], "stage_dirs": [], "deletes": deletes}
    rdir = run_dir(rid)

    def save():
        write_json_atomic(os.path.join(rdir, "staged.json"), record)

    try:
        old = load_staged(rid)
        if old:  # a retried stage of the same run: start from scratch
            cleanup_stage(rid, old)
        os.makedirs(rdir, mode=0o700, exist_ok=True)
        save()
        for p, want in expect.items():
            got = live_sha(p)
            if got != want:
                raise AgentError("conflict", "%s changed on the host since it was observed: expected %s, found %s"
                                 % (p, want or "no file", got or "no file"), path=p, expected=want, actual=got)
        installed = install_packages(install)
        ensure_users(req.get("users") or [])  # release.py
        for f in files:
            write_staged(f, rid, record, save)
        staged = {f["path"]: f["staged"] for f in record["files"]}
        checked = [validate_one(v, rid, staged, record, save) for v in validate]
    except BaseException as e:
        try:
            cleanup_stage(rid, record)
            msg = e.message if isinstance(e, AgentError) else "%s: %s" % (type(e).__name__, e)
            append_history(history, "failed", msg)
        finally:
            release_lock(rid)
        raise
    STAGED_RUNS[rid] = history  # undone if the tool goes away before it commits (main)
    answer = {"ok": True, "staged": [{"path": f["path"], "staged": f["staged"]} for f in record["files"]],
              "installed": installed, "validated": checked}
    if taken.get("replaced_stale"):
        answer["replaced_stale_lock"] = taken["replaced_stale"]
    return answer


# ---------------------------------------------------------------- abort

def op_abort(req):
    rid = run_id_of(req)
    STAGED_RUNS.pop(rid, None)
    rdir = run_dir(rid)
    removed = []
    try:
        record = read_json(os.path.join(rdir, "staged.json"))
    except ValueError:
        record = None
    committed = os.path.exists(os.path.join(rdir, "backup.json"))
    if record and not committed:
        removed = [f["path"] for f in record.get("files", []) if os.path.lexists(f["staged"])]
        cleanup_stage(rid, record)
    elif not committed:
        remove_quiet(rdir)
    released = release_lock(rid)
    return {"ok": True, "removed": removed, "released": released, "committed": committed}


# ---------------------------------------------------------------- commit / rollback

def backup_path(rid, target):
    return os.path.join(run_dir(rid), "backup", target.lstrip("/"))


def restore_backups(rid, entries, dirs):
    """Undo a commit: put back files that existed, remove those that did not. Best effort."""
    problems = []
    for e in reversed(entries):
        try:
            if e["existed"]:
                restore_file(backup_path(rid, e["path"]), e["path"], rid)
            elif e["kind"] == "replace" and (e.get("replaced") or live_sha(e["path"]) == e.get("new_sha256")):
                remove_quiet(e["path"])  # new in this run (by hash: a crashed commit did not record it)
        except OSError as err:
            problems.append("%s: %s" % (e["path"], err))
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass
    return problems


def check_actions(actions):
    """Validate actions and checks before anything changes."""
    if not isinstance(actions, list):
        raise AgentError("request", "actions must be a list")
    for a in actions:
        name = safe_name(a.get("service") if isinstance(a, dict) else None, "service")
        if a.get("action") not in ("reload", "restart", "start", "stop"):
            raise AgentError("request", "unknown action %r for %s" % (a.get("action"), name), service=name)
        g = a.get("guard")
        if g is not None and not (isinstance(g, dict) and isinstance(g.get("path"), str)
                                  and isinstance(g.get("seconds"), (int, float)) and 5 <= g["seconds"] <= 3600):
            raise AgentError("request", "invalid guard for %s" % name, service=name)
        c = a.get("check")
        if not c:
            continue
        if not isinstance(c, dict):
            raise AgentError("request", "check of %s must be an object" % name, service=name)
        try:
            float(c.get("timeout_s", 0))
            if "live" in c:
                if c["live"] not in LIVE_KINDS:
                    raise ValueError("unknown live check %r" % c["live"])
                if c["live"] in ("haproxy", "mariadb"):
                    safe_path(c.get("config"), "check.config")
                if not isinstance(c.get("tcp", []), list):
                    raise ValueError("tcp must be a list of HOST:PORT")
            elif "tcp" in c:
                int(str(c["tcp"]).rpartition(":")[2])
            elif "command" in c:
                if not isinstance(c["command"], list) or not c["command"] or \
                        not all(isinstance(x, str) for x in c["command"]):
                    raise ValueError("command must be a non-empty list of strings")
            elif not c.get("running"):
                raise ValueError("want one of tcp, command, running")
        except (TypeError, ValueError) as e:
            raise AgentError("request", "invalid check for %s: %s" % (name, e), service=name)
    return actions


def run_actions(actions, init, rid=None, watch=False):
    """Run actions and their checks in order; raise AgentError(service) at the first failure.
    An action with "guard" (the firewall) arms the anti-lockout guard first. With `watch`
    (a commit), each action first makes sure the tool is still there."""
    done = []
    for a in actions:
        if watch:
            ensure_controller()
        name = a["service"]
        t0 = now()
        guard = a.get("guard")
        if guard and rid and a["action"] != "stop":
            firewall_arm(rid, safe_path(guard["path"], "guard.path"), float(guard["seconds"]))
        before = live_snapshot(name, a.get("check"))
        try:
            code, out, ran = service_action(name, a["action"], init)
        except BaseException:
            if guard:
                firewall_disarm()
            raise
        if code != 0 and guard:
            firewall_disarm()
        if code != 0:
            raise AgentError("service", "%s %s failed (exit %s)" % (name, ran, code), service=name,
                             action=ran, output=tail(out.strip() + log_tail(name)))
        problem = run_check(name, a.get("check"), init, before, ran, t0, out)
        if problem:
            if guard:
                firewall_disarm()
            raise AgentError("service", "%s %s: check failed: %s" % (name, ran, problem.splitlines()[0]),
                             service=name, action=ran,
                             output=tail((out.strip() + "\n" + problem).strip()
                                         + ("" if "live" in a["check"] else log_tail(name))))
        done.append({"service": name, "action": ran, "seconds": round(now() - t0, 3)})
    return done


SERVING = False  # main(): requests come framed over the tool's connection
STAGED_RUNS = {}  # run id -> its history record, staged by this agent and not yet committed


def abandon_staged():
    """The tool's connection closed while a run it staged here was not committed (the
    tool gave up on this host): remove the staged files, free the lock, and say so in
    the host's history."""
    for rid, history in list(STAGED_RUNS.items()):
        STAGED_RUNS.pop(rid, None)
        if os.path.exists(os.path.join(run_dir(rid), "backup.json")):
            continue  # the commit ran (and undid itself if the tool had gone)
        try:
            held = read_json(LOCK, {}) or {}
        except ValueError:
            held = {}
        if isinstance(held, dict) and held.get("run_id") == rid:
            append_history(history, "aborted", "the tool's connection to this host was lost "
                           "before the commit: nothing was changed, the staged files were removed")
        op_abort({"run_id": rid})


def ensure_controller():
    """Raise AgentError("gone") once the tool's connection is gone (stdin, the SSH
    channel, hung up: the tool gave up on this host, e.g. it stopped answering its SSH
    keepalives). A commit then undoes itself rather than finish after the tool has
    reported this host unchanged."""
    if not SERVING:
        return
    import select
    p = select.poll()
    p.register(0, select.POLLIN | select.POLLPRI)
    for _, ev in p.poll(0):
        if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            raise AgentError("gone", "the tool's connection to this host was lost during the "
                             "commit: it was undone here")


def reload_again(actions, init):
    """After restoring files: reload/restart each service once more and, where it has a
    live check, confirm it runs the restored files. Returns what did not come back."""
    seen, problems = set(), []
    for a in actions:
        name = a["service"]
        if name in seen:
            continue
        seen.add(name)
        check = a.get("check") if "live" in (a.get("check") or {}) else None
        before, t0 = live_snapshot(name, check), now()
        try:
            code, out, ran = service_action(name, "restart" if a["action"] == "restart" else "reload", init)
        except Exception as e:
            problems.append("%s: %s" % (name, e))
            continue
        problem = ("%s failed (exit %s): %s" % (ran, code, headline(out))) if code != 0 else \
            run_check(name, check, init, before, ran, t0, out)
        if problem:
            problems.append("%s: %s" % (name, problem.splitlines()[0]))
    return problems


def prune_agent_cache(keep=3):
    """The bootstrap keeps each agent version it ran in AGENT_CACHE (its compiled code
    beside it): keep this one and the `keep` newest others."""
    me = os.path.splitext(os.path.basename(globals().get("__file__") or ""))[0]
    try:
        names = [n[:-3] for n in os.listdir(AGENT_CACHE) if n.startswith("foobar_agent_") and n.endswith(".py")]
    except OSError:
        return
    names.sort(key=lambda n: os.stat(os.path.join(AGENT_CACHE, n + ".py")).st_mtime, reverse=True)
    for n in [n for n in names if n != me][keep:]:
        remove_quiet(os.path.join(AGENT_CACHE, n + ".py"))
        remove_quiet(os.path.join(AGENT_CACHE, "__pycache__", "%s.%s.pyc" % (n, sys.implementation.cache_tag)))


def prune_runs(keep_rid):
    prune_agent_cache()
    try:
        names = [n for n in os.listdir(RUNS) if os.path.isdir(os.path.join(RUNS, n))]
    except FileNotFoundError:
        return
    names.sort(key=lambda n: os.stat(os.path.join(RUNS, n)).st_mtime, reverse=True)
    for n in names[KEEP_RUNS:]:
        if n != keep_rid:
            remove_quiet(os.path.join(RUNS, n))


def load_staged(rid):
    try:
        return read_json(os.path.join(run_dir(rid), "staged.json"))
    except ValueError:
        return None


def op_commit(req):
    rid = run_id_of(req)
    rdir = run_dir(rid)
    require_lock(rid)
    try:
        return commit_checked(req, rid, rdir)
    except AgentError as e:
        if e.kind == "request":  # refused before anything changed: the lock goes with it
            release_lock(rid)
        raise


def commit_checked(req, rid, rdir):
    STAGED_RUNS.pop(rid, None)  # from here the commit undoes itself if the tool goes away
    actions = check_actions(req.get("actions") or [])
    boot = check_boot(req.get("boot") or [])  # boot.py
    history = req.get("history")
    bj = os.path.join(rdir, "backup.json")
    if os.path.exists(bj):
        raise AgentError("request", "run %s is already committed on this host" % rid)
    record = load_staged(rid)
    if not record:
        raise AgentError("request", "run %s has nothing staged on this host" % rid)
    staged = {f["path"]: f for f in record["files"]}
    wanted = req.get("files")
    wanted = list(staged) if wanted is None else [safe_path(p) for p in wanted]
    for p in wanted:
        if p not in staged:
            raise AgentError("request", "%s was not staged in run %s" % (p, rid), path=p)
        if not os.path.isfile(staged[p]["staged"]):
            raise AgentError("io", "staged file %s has disappeared" % staged[p]["staged"], path=p)
    deletes = req.get("deletes")
    deletes = record.get("deletes", []) if deletes is None else [safe_path(p, "deletes") for p in deletes]
    init = init_system()

    entries = []
    state = {"run_id": rid, "state": "committing", "entries": entries, "actions": actions,
             "had_manifest": os.path.exists(MANIFEST), "dirs": record.get("dirs", []), "boot": []}
    changed = False
    try:
        ensure_controller()
        # 1. back up everything first, and record it, before touching any target
        if state["had_manifest"]:
            copy_file(MANIFEST, os.path.join(rdir, "manifest.prev.json"))
        for p in wanted:
            existed = os.path.lexists(p)
            if existed:
                copy_preserving(p, backup_path(rid, p))
            entries.append({"path": p, "existed": existed, "kind": "replace", "replaced": False,
                            "new_sha256": staged[p]["sha256"]})
        for p in deletes:
            existed = os.path.lexists(p)
            if existed:
                copy_preserving(p, backup_path(rid, p))
            entries.append({"path": p, "existed": existed, "kind": "delete"})
        write_json_atomic(bj, state)
        # A service whose role leaves the host stops while its files (its init script)
        # are still there.
        stops = [a for a in actions if a["action"] == "stop"]
        others = [a for a in actions if a["action"] != "stop"]
        stopped = run_actions(stops, init, rid, watch=True)
        # ... and is off at boot (systemctl disable needs its unit file).
        apply_boot([b for b in boot if not b["enable"]], init, state["boot"])
        # 2. swap files in
        ensure_controller()
        for e in entries:
            changed = True
            if e["kind"] == "replace":
                os.replace(staged[e["path"]]["staged"], e["path"])
                e["replaced"] = True
            elif e["existed"]:
                os.unlink(e["path"])
        for d in sorted({os.path.dirname(e["path"]) for e in entries}):
            fsync_dir(d)
        # 3. services
        done = stopped + run_actions(others, init, rid, watch=True)
        apply_boot([b for b in boot if b["enable"]], init, state["boot"])
        drop_dangling(state["boot"], init)
        ensure_controller()  # the last moment a commit can still be undone
    except BaseException as e:
        if any(a.get("guard") for a in actions):
            firewall_disarm()  # the restore below puts the old ruleset back itself
        problems = restore_backups(rid, entries, state["dirs"]) if changed else []
        for f in record["files"]:
            remove_quiet(f["staged"])
        problems += undo_boot(state["boot"], init)
        not_back = []
        if changed:
            try:
                not_back = reload_again([a for a in actions if a["action"] != "stop"], init)
            except Exception as again:
                not_back = ["%s: %s" % (type(again).__name__, again)]
        for a in actions:
            if a["action"] == "stop":  # its files are back: so is the service
                try:
                    service_action(a["service"], "start", init)
                except Exception:
                    pass
        msg = e.message if isinstance(e, AgentError) else "%s: %s" % (type(e).__name__, e)
        if problems:
            msg += "; RESTORING FAILED for: " + "; ".join(problems)
        elif changed:
            msg += "; the previous files were restored"
        if not_back:
            msg += "; after the restore these do NOT run them: " + "; ".join(not_back)
        gone = isinstance(e, AgentError) and e.kind == "gone"
        state["state"] = "aborted" if gone else "restored"
        try:
            write_json_atomic(bj, state)
            append_history(history, "aborted" if gone else "failed", msg)
        finally:
            release_lock(rid)
        if isinstance(e, AgentError):
            e.message = msg
            raise
        if isinstance(e, OSError):
            raise AgentError("io", msg, path=e.filename)
        raise
    if req.get("manifest") is not None:
        write_json_atomic(MANIFEST, req["manifest"])
    state.update(state="committed", committed=now())
    write_json_atomic(bj, state)
    append_history(history, "applied")
    prune_runs(rid)
    release_lock(rid)
    return {"ok": True, "actions": done, "boot": state["boot"]}


def op_rollback(req):
    rid = run_id_of(req)
    rdir = run_dir(rid)
    actions = check_actions(req.get("actions") or [])
    history = req.get("history")
    bj = os.path.join(rdir, "backup.json")
    try:
        state = read_json(bj)
    except ValueError:
        state = None
    if not state:
        raise AgentError("request", "run %s has no committed changes on this host" % rid)
    if state.get("state") in ("restored", "aborted", "rolled-back"):
        return {"ok": True, "restored": [], "actions": [], "already": state["state"]}
    take_lock(req, rid)
    entries = state.get("entries", [])
    try:
        if not req.get("force"):
            for e in entries:
                if e["kind"] == "replace" and e.get("replaced", True) and live_sha(e["path"]) != e.get("new_sha256"):
                    raise AgentError("conflict", "%s changed after run %s committed it: not rolling back"
                                     % (e["path"], rid), path=e["path"])
        problems = restore_backups(rid, entries, state.get("dirs", []))
        problems += undo_boot(state.get("boot"), init_system())  # boot.py: what the run changed at boot
        for f in (load_staged(rid) or {}).get("files", []):
            remove_quiet(f["staged"])  # left over if a commit crashed half-way
        if problems:
            raise AgentError("io", "rollback could not restore: " + "; ".join(problems))
        prev = os.path.join(rdir, "manifest.prev.json")
        if os.path.exists(prev):
            write_json_atomic(MANIFEST, read_json(prev))
        elif not state.get("had_manifest", True):
            remove_quiet(MANIFEST)
        state["state"] = "rolled-back"
        write_json_atomic(bj, state)
        # A service stopped by the run comes back with its files.
        actions = [dict(a, action="start", check=None) if a["action"] == "stop" else a for a in actions]
        done = run_actions(actions, init_system())
    except BaseException as e:
        msg = e.message if isinstance(e, AgentError) else "%s: %s" % (type(e).__name__, e)
        try:
            append_history(history, "failed", "rollback: " + msg)
        finally:
            release_lock(rid)
        raise
    append_history(history, "rolled-back")
    release_lock(rid)
    return {"ok": True, "restored": [e["path"] for e in entries], "actions": done}


# ---------------------------------------------------------------- main

OPS = {"observe": op_observe, "stage": op_stage, "abort": op_abort, "commit": op_commit, "rollback": op_rollback}


def handle(raw):
    try:
        req = json.loads(raw)
    except ValueError as e:
        raise AgentError("request", "request is not valid JSON: %s" % e)
    if not isinstance(req, dict) or req.get("op") not in OPS:
        raise AgentError("request", "unknown op %r (expected one of %s)"
                         % (req.get("op") if isinstance(req, dict) else None, ", ".join(sorted(OPS))))
    try:
        return OPS[req["op"]](req)
    except OSError as e:
        raise AgentError("io", "%s: %s" % (e.filename or "", e.strerror or e), path=e.filename)


def answer_of(raw):
    try:
        return handle(raw)
    except AgentError as e:
        return e.answer()


def main(argv=()):
    """One request on stdin to EOF, one answer; or, with "serve", requests framed as
    `LENGTH\n` + LENGTH bytes, one answer line each, until stdin closes (the tool keeps
    one agent per host for a whole run: observe, stage and commit in one process)."""
    os.umask(0o022)
    out = sys.stdout
    if argv[:1] == ["listen"]:
        return listen(argv[1:])  # daemon.py
    if "serve" not in argv:
        out.write(json.dumps(answer_of(sys.stdin.buffer.read()), sort_keys=True) + "\n")
        out.flush()
        return 0
    inp = sys.stdin.buffer
    global SERVING
    SERVING = True
    while True:
        head = inp.readline()
        if not head:
            abandon_staged()
            return 0
        raw = inp.read(int(head))
        try:
            out.write(json.dumps(answer_of(raw), sort_keys=True) + "\n")
            out.flush()
        except OSError:  # the tool is gone (e.g. killed) before its answer: as at EOF
            abandon_staged()
            return 0
