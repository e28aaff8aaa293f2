"""The agent kept between runs
(`--persist SECONDS`): the same requests as `serve`, answered by a daemon on a Unix
socket that the tool reaches through its kept SSH master (a forwarded socket, no new
exec request, no Python start). Who may reach it (SECURITY.md, finding 6):
  * logged in as root: the socket is /run/foobar-infra/root/agent-ID.0.sock, root's,
    0600, in a directory only root can enter (0700): no other user can connect;
  * logged in as another user (sudo): sshd connects as that user, so the socket is
    /run/foobar-infra/agent-ID.UID.sock, that user's, 0600 (the directory 0711 root),
    and each connection must first send the daemon's token: 32 random bytes kept
    root-only in /run/foobar-infra/root/ and given only to the tool, in the answer to
    `listen` (which runs through sudo). Other processes of that user get no greeting.
Every connection sends the token, root's too. The daemon exits once no connection has
been open for SECONDS, or when its socket is gone."""

import json
import os
import stat

from . import lock as host_lock
from .core import ALNUM, AgentError, chars_ok, now, socket, traceback
from .files import remove_quiet
from .ops import answer_of


DAEMON_DIR = "/run/foobar-infra"
DAEMON_ROOT_DIR = DAEMON_DIR + "/root"
TOKEN_WAIT_S = 10.0


def own_dir(path, mode):
    """Create `path` (root's, `mode`) or check that it is one: a directory of root's
    that no one else may write (nor, for 0700, enter)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o7777 & ~mode:
        raise SystemExit("listen: %s is not a directory of root's with mode %o" % (path, mode))


def kept_token(path):
    """The token in `path`, or None."""
    try:
        with open(path, "rb") as f:
            token = f.read(128).strip()
    except OSError:
        return None
    return token if len(token) == 64 else None


def greets(path, token):
    """Whether a daemon listens at `path` and greets after `token`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
        probe.sendall(token + b"\n")
        return probe.recv(64).startswith(b"foobar-agent")
    except OSError:
        return False
    finally:
        probe.close()


def listen(args):
    """`listen ID SECONDS`: start the daemon for this agent version (unless one answers
    already) and print {"ok": true, "socket": PATH, "token": TOKEN} once it accepts
    connections."""
    agent_id, idle = args[0], float(args[1])
    if not chars_ok(agent_id, ALNUM, 64):
        raise SystemExit("listen: bad agent id")
    uid = int(os.environ.get("SUDO_UID") or os.getuid()) if os.geteuid() == 0 else os.getuid()
    own_dir(DAEMON_DIR, 0o711)
    own_dir(DAEMON_ROOT_DIR, 0o700)
    name = "agent-%s.%d" % (agent_id, uid)
    path = "%s/%s.sock" % (DAEMON_ROOT_DIR if uid == 0 else DAEMON_DIR, name)
    token_path = "%s/%s.token" % (DAEMON_ROOT_DIR, name)
    token = kept_token(token_path)
    if token and greets(path, token):  # one is running already
        print(json.dumps({"ok": True, "socket": path, "token": token.decode()}))
        return 0
    token = os.urandom(32).hex().encode()
    write_private(token_path, token)
    remove_quiet(path)  # a daemon still serving it notices and exits
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never connectable by others, not even for a moment
    try:
        srv.bind(path)
    finally:
        os.umask(old)
    os.chown(path, uid, -1)
    os.chmod(path, 0o600)
    srv.listen(16)
    ready = {"ok": True, "socket": path, "token": token.decode()}
    if os.fork():
        srv.close()
        print(json.dumps(ready))
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let go of the SSH channel
        os.dup2(null, fd)
    try:
        serve_socket(srv, path, idle, token)
    finally:
        os._exit(0)


def write_private(path, data):
    """Replace `path` with `data`, root's and 0600 from the start."""
    tmp = "%s.%d" % (path, os.getpid())
    remove_quiet(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def serve_socket(srv, path, idle, token):
    import _operator  # builtin: the constant-time comparison hmac.compare_digest uses
    import threading
    lock = threading.Lock()
    state = {"active": 0, "last": now()}
    inode = os.stat(path).st_ino
    # A host lock belongs to the connection that took it (take_lock): freed when that
    # connection closes, as a serving agent's is when it exits.
    local = threading.local()
    host_lock.held_locks = lambda: local.__dict__.setdefault("held", {})  # noqa: E731
    held_locks = host_lock.held_locks

    def handle(conn):
        try:
            f = conn.makefile("rb")
            conn.settimeout(TOKEN_WAIT_S)
            if not _operator._compare_digest(f.readline(130).rstrip(b"\n"), token):
                return  # not the tool: no greeting, no request read
            conn.settimeout(None)
            conn.sendall(b"foobar-agent\n")
            while True:
                head = f.readline()
                if not head:
                    break
                raw = f.read(int(head))
                try:
                    answer = answer_of(raw)
                except BaseException:  # a crash answers; it does not end the daemon
                    answer = AgentError("crash", traceback.format_exc()).answer()
                conn.sendall((json.dumps(answer, sort_keys=True) + "\n").encode())
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            for fd in held_locks().values():
                os.close(fd)
            held_locks().clear()
            with lock:
                state["active"] -= 1
                state["last"] = now()

    srv.settimeout(1.0)
    while True:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            with lock:
                idle_for = now() - state["last"] if state["active"] == 0 else 0
            try:
                mine = os.stat(path).st_ino == inode
            except OSError:
                mine = False
            if not mine:
                return
            if idle_for > idle:
                break
            continue
        conn.settimeout(None)
        with lock:
            state["active"] += 1
            state["last"] = now()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
