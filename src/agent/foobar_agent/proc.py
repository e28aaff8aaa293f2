"""Child processes: commands run with a clean environment, their output read through a
file or pipes (never our own stdout), with a timeout. posix_spawn, not the subprocess
module (its imports cost each agent ~9 ms). And the process table (/proc) as read."""

import os
import time

from .core import now


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



def proc_stat(pid, proc="/proc"):
    """(name, parent pid) of a process from PROC/PID/stat, None once it is gone."""
    try:
        with open("%s/%s/stat" % (proc, pid), "rb") as f:
            st = f.read()
    except OSError:
        return None
    name = st[st.find(b"(") + 1:st.rfind(b")")].decode("utf-8", "replace")
    rest = st[st.rfind(b")") + 2:].split()  # the name may hold spaces and parentheses
    return name, int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else 0


def proc_argv(pid, proc="/proc"):
    """A process's command line (PROC/PID/cmdline), [] once it is gone."""
    try:
        with open("%s/%s/cmdline" % (proc, pid), "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def processes(proc="/proc"):
    """{pid: (name, parent pid)} of every process."""
    table = {}
    for d in os.listdir(proc):
        if d.isdigit():
            st = proc_stat(d, proc)
            if st:
                table[int(d)] = st
    return table
