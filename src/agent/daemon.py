

# ================================================================ daemon.py
# Appended to agent.py when the tool embeds the agent. The agent kept between runs
# (`--persist SECONDS`): the same requests as `serve`, answered by a daemon on a Unix
# socket that the tool reaches through its kept SSH master (a forwarded socket, no new
# exec request, no Python start). It listens at /run/foobar-infra/agent-ID.UID.sock
# (0600, owned by the login user: sshd connects as that user; the directory 0711 root)
# and exits once no connection has been open for SECONDS, or when its socket is gone.

DAEMON_DIR = "/run/foobar-infra"


def listen(args):
    """`listen ID SECONDS`: start the daemon for this agent version (unless one answers
    already) and print {"ok": true, "socket": PATH} once it accepts connections."""
    agent_id, idle = args[0], float(args[1])
    if not chars_ok(agent_id, ALNUM, 64):
        raise SystemExit("listen: bad agent id")
    uid = int(os.environ.get("SUDO_UID") or os.getuid()) if os.geteuid() == 0 else os.getuid()
    try:
        os.mkdir(DAEMON_DIR, 0o711)
    except FileExistsError:
        pass
    st = os.lstat(DAEMON_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SystemExit("listen: %s is not a directory only root can write" % DAEMON_DIR)
    path = "%s/agent-%s.%d.sock" % (DAEMON_DIR, agent_id, uid)
    ready = {"ok": True, "socket": path}
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
        if probe.recv(64).startswith(b"foobar-agent"):
            print(json.dumps(ready))  # one is running already
            return 0
    except OSError:
        pass
    finally:
        probe.close()
    remove_quiet(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chown(path, uid, -1)
    os.chmod(path, 0o600)
    srv.listen(16)
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
        serve_socket(srv, path, idle)
    finally:
        os._exit(0)


def serve_socket(srv, path, idle):
    import threading
    lock = threading.Lock()
    state = {"active": 0, "last": now()}
    inode = os.stat(path).st_ino

    def handle(conn):
        try:
            conn.sendall(b"foobar-agent\n")
            f = conn.makefile("rb")
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
