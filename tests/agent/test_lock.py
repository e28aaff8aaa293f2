"""The host lock (src/agent/foobar_agent/lock.py) and the kept agent's door
(src/agent/foobar_agent/daemon.py) on temporary directories, with other processes
standing in for other agents: issue 20, findings 12 and 6.

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from agent_support import AgentTest
from foobar_agent import daemon, lock, paths, state
from foobar_agent.core import AgentError
from foobar_agent.files import read_json, write_json_atomic

HERE = os.path.dirname(os.path.abspath(__file__))

# Another agent: holds LOCK_HOLD's flock (argv[1]) until killed.
HOLDER = """import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""

# Another agent that takes the lock for run "gone" in the state directory argv[1] and
# exits without releasing it (killed, or its connection closed).
TAKES_AND_EXITS = """import os, sys
sys.path.insert(0, %r)
from test_lock import state_in
from foobar_agent import lock
state_in(setattr, sys.argv[1])
lock.take_lock({"lock": {"owner": "carol@old", "pid": 1}}, "gone")
print("taken", flush=True)
""" % HERE


def state_in(put, state_dir):
    """The agent's state directory moved to `state_dir` (put(module, name, value))."""
    put(paths, "STATE_DIR", state_dir)
    put(paths, "RUNS", os.path.join(state_dir, "runs"))
    put(paths, "LOCK", os.path.join(state_dir, "lock.json"))
    put(paths, "LOCK_HOLD", os.path.join(state_dir, "lock.flock"))
    put(paths, "GUARD", os.path.join(state_dir, ".lock-guard"))


class Lock(AgentTest):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        state_in(self.put, self.dir)
        self.holders = []

    def tearDown(self):
        for p in self.holders:
            p.kill()
            p.wait()
            p.stdout.close()
        for fd in lock.HELD_LOCKS.values():
            os.close(fd)
        lock.HELD_LOCKS.clear()
        shutil.rmtree(self.dir)

    def hold(self):
        p = subprocess.Popen([sys.executable, "-c", HOLDER, paths.LOCK_HOLD], stdout=subprocess.PIPE)
        self.holders.append(p)
        self.assertEqual(p.stdout.readline().strip(), b"held")
        return p

    def write_lock(self, started):
        write_json_atomic(paths.LOCK, {
            "owner": "alice@laptop", "pid": 4242, "started": started, "run_id": "other-run", "host": "h"})

    def lock_json(self):
        return read_json(paths.LOCK)

    def request(self, **extra):
        return dict({"lock": {"owner": "bob@ci", "pid": 7, "started": time.time()}}, **extra)

    def free(self):
        """Whether another process could take the flock now."""
        probe = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n" \
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        return subprocess.run([sys.executable, "-c", probe, paths.LOCK_HOLD],
                              stderr=subprocess.DEVNULL).returncode == 0

    def test_finding_12_a_live_lock_is_never_taken_however_old_and_the_error_says_how_to_clear_it(self):
        self.write_lock(time.time() - 86400)
        holder = self.hold()
        t0 = time.time()
        with self.assertRaises(AgentError) as caught:
            # The old request field too: a lock is no longer stale by age.
            lock.take_lock(self.request(lock_wait_s=1, stale_after_s=1), "mine")
        self.assertGreaterEqual(time.time() - t0, 0.9, "waited --lock-timeout for it")
        e = caught.exception
        self.assertEqual(e.kind, "locked")
        for words in ("alice@laptop", "other-run", "still in progress", "kill %d" % holder.pid):
            self.assertIn(words, e.message)
        self.assertEqual(self.lock_json()["run_id"], "other-run")

        # Freed while we wait: taken then.
        threading.Timer(0.5, holder.kill).start()
        taken = lock.take_lock(self.request(lock_wait_s=10), "mine")
        self.assertEqual(taken["run_id"], "mine")

    def test_finding_12_a_lock_dies_with_the_agent_that_held_it(self):
        out = subprocess.run([sys.executable, "-c", TAKES_AND_EXITS, self.dir], capture_output=True)
        self.assertEqual(out.stdout.strip(), b"taken", out.stderr)
        self.assertEqual(self.lock_json()["run_id"], "gone", "lock.json stays, as information")
        self.assertTrue(self.free(), "its flock went with the process")
        taken = lock.take_lock(self.request(), "mine")  # at once, however recent
        self.assertEqual(taken["replaced_stale"]["run_id"], "gone")
        self.assertEqual(self.lock_json()["run_id"], "mine")
        self.assertFalse(self.free(), "held by this agent now")
        lock.require_lock("mine")
        self.assertTrue(lock.release_lock("mine"))
        self.assertTrue(self.free())
        self.assertIsNone(self.lock_json())

    def test_a_dead_runs_staged_files_go_with_its_lock(self):
        out = subprocess.run([sys.executable, "-c", TAKES_AND_EXITS, self.dir], capture_output=True)
        self.assertEqual(out.stdout.strip(), b"taken", out.stderr)
        staged = os.path.join(self.dir, "site.conf.foobar-new-gone")
        open(staged, "w").close()
        os.makedirs(state.run_dir("gone"))
        write_json_atomic(os.path.join(state.run_dir("gone"), "staged.json"),
                                     {"run_id": "gone", "files": [{"path": "/x", "staged": staged}]})
        lock.take_lock(self.request(), "mine")
        self.assertFalse(os.path.exists(staged))
        self.assertFalse(os.path.exists(state.run_dir("gone")))

    def test_a_runs_next_agent_may_go_on_with_its_lock_but_not_with_anothers(self):
        # The run's first agent took the lock and is gone (e.g. its connection broke).
        out = subprocess.run([sys.executable, "-c", TAKES_AND_EXITS, self.dir], capture_output=True)
        self.assertEqual(out.stdout.strip(), b"taken", out.stderr)
        lock.require_lock("gone")  # nobody took it since: this agent goes on
        self.assertFalse(self.free())
        self.assertTrue(lock.release_lock("gone"))
        # Another run's live lock: refused.
        self.write_lock(time.time())
        self.hold()
        with self.assertRaises(AgentError) as caught:
            lock.require_lock("gone")
        self.assertIn("does not hold the lock", caught.exception.message)


class KeptAgentDoor(AgentTest):
    def test_finding_6_the_kept_agent_greets_and_answers_only_after_its_token(self):
        self.put(lock, "held_locks", lock.held_locks)  # serve_socket replaces it
        d = tempfile.mkdtemp()
        path = os.path.join(d, "agent.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(4)
        token = b"ab" * 32
        t = threading.Thread(target=daemon.serve_socket, args=(srv, path, 30.0, token), daemon=True)
        t.start()

        def talk(first):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(15)
            s.connect(path)
            s.sendall(first)
            data = b""
            while data.count(b"\n") < 2:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            return data

        req = b'{"op": "no-such-op"}'
        framed = b"%d\n%s" % (len(req), req)
        try:
            self.assertEqual(talk(framed), b"", "no token: no greeting, no answer")
            self.assertEqual(talk(b"0" * 64 + b"\n" + framed), b"", "a wrong token: the same")
            got = talk(token + b"\n" + framed)
            self.assertTrue(got.startswith(b"foobar-agent\n"), got)
            self.assertIn(b'"ok": false', got)  # answered (an unknown operation)
        finally:
            os.unlink(path)  # the daemon ends once its socket is gone
            t.join(5)
            srv.close()
            shutil.rmtree(d)


if __name__ == "__main__":
    unittest.main()
