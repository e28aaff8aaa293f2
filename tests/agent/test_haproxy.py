"""A drain waits for HAProxy processes of an earlier config, not only for the server's
sessions: after a reload the old process still sends the requests it accepted before
by its own view of the servers (in which the server is not drained), so an application
restarted as soon as the current process shows no sessions can answer one of them with
a 502 (seen in CI on Debian 12: a request accepted by the old process 50 ms before the
drain reached web-01 while its application restarted).

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import os
import tempfile

from agent_support import AgentTest
from foobar_agent import haproxy


def fake_proc(root, procs):
    """/proc under root: {pid: (name, ppid, argv)}."""
    for pid, (name, ppid, argv) in procs.items():
        d = os.path.join(root, str(pid))
        os.makedirs(d)
        with open(os.path.join(d, "stat"), "wb") as f:
            f.write(("%d (%s) S %d 1 1 0 -1\n" % (pid, name, ppid)).encode())
        with open(os.path.join(d, "cmdline"), "wb") as f:
            f.write(b"\0".join(a.encode() for a in argv) + b"\0")


CFG = ["/usr/sbin/haproxy", "-f", "/etc/haproxy/haproxy.cfg"]


class OldProcesses(AgentTest):
    def setUp(self):
        self.proc = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.proc)

    def test_after_a_reload_by_init_script_the_old_daemon_is_old(self):
        # Debian 12: `haproxy -f CFG -p PID -sf OLD -D`, both daemons children of init.
        fake_proc(self.proc, {
            1: ("sshd", 0, ["sshd"]),
            90: ("haproxy", 1, CFG + ["-p", "/run/haproxy.pid", "-D"]),
            208: ("haproxy", 1, CFG + ["-p", "/run/haproxy.pid", "-sf", "90", "-D"]),
        })
        self.assertEqual(haproxy.old_haproxy_processes(208, self.proc), [90])
        self.assertEqual(haproxy.old_haproxy_processes(90, self.proc), [208])

    def test_the_master_is_not_old_but_its_old_worker_is(self):
        # systemd: `haproxy -Ws -f CFG`, a master and its workers (the old one finishing).
        fake_proc(self.proc, {
            1: ("systemd", 0, ["/sbin/init"]),
            50: ("haproxy", 1, ["/usr/sbin/haproxy", "-Ws", "-f", "/etc/haproxy/haproxy.cfg"]),
            61: ("haproxy", 50, ["/usr/sbin/haproxy", "-Ws", "-f", "/etc/haproxy/haproxy.cfg"]),
            77: ("haproxy", 50, ["/usr/sbin/haproxy", "-Ws", "-f", "/etc/haproxy/haproxy.cfg"]),
        })
        self.assertEqual(haproxy.old_haproxy_processes(77, self.proc), [61])

    def test_another_haproxy_with_its_own_config_and_other_programs_are_not_old(self):
        fake_proc(self.proc, {
            1: ("sshd", 0, ["sshd"]),
            208: ("haproxy", 1, CFG + ["-D"]),
            300: ("haproxy", 1, ["/usr/sbin/haproxy", "-f", "/etc/other/haproxy.cfg", "-D"]),
            301: ("nginx", 1, ["nginx: master process"]),
        })
        self.assertEqual(haproxy.old_haproxy_processes(208, self.proc), [])

    def test_no_current_process_means_none_to_wait_for(self):
        fake_proc(self.proc, {90: ("haproxy", 1, CFG)})
        self.assertEqual(haproxy.old_haproxy_processes(None, self.proc), [])
        self.assertEqual(haproxy.old_haproxy_processes(91, self.proc), [])


class Drain(AgentTest):
    """op_haproxy_server over a stand-in runtime API and process table."""

    def setUp(self):
        self.fake_clock(haproxy)
        self.sent = []
        self.put(haproxy, "haproxy_cmd", lambda cmd, **kw: self.sent.append(cmd) or "")
        self.put(haproxy, "save_haproxy_state", lambda: None)
        self.put(haproxy, "haproxy_pid", lambda: 208)
        self.put(haproxy, "haproxy_server_stat", lambda b, s: ("DRAIN", 0))

    def olds(self, answers):
        """old_haproxy_processes answers these in turn (the last one from then on)."""
        seen = list(answers)
        self.put(haproxy, "old_haproxy_processes",
                 lambda current: seen.pop(0) if len(seen) > 1 else seen[0])

    def drain(self, timeout_s=30):
        req = {"backend": "web", "server": "web-01", "state": "drain", "timeout_s": timeout_s}
        return haproxy.op_haproxy_server(req)

    def test_no_sessions_and_no_old_process_returns_at_once(self):
        self.olds([[]])
        got = self.drain()
        self.assertEqual(self.sent, ["set server web/web-01 state drain"])
        self.assertEqual((got["sessions"], got["old_processes"], self.slept), (0, 0, []))

    def test_it_waits_until_the_old_process_has_exited(self):
        self.olds([[90], [90], [90], []])
        got = self.drain()
        self.assertEqual(got["old_processes"], 0)
        self.assertEqual([round(s, 3) for s in self.slept], [0.01, 0.02, 0.04])

    def test_an_old_process_that_stays_ends_the_wait_at_the_deadline_and_is_reported(self):
        self.olds([[90]])
        got = self.drain(timeout_s=2)
        self.assertEqual(got["old_processes"], 1)
        self.assertGreaterEqual(self.clock[0], 1002.0)
        self.assertLess(self.clock[0], 1002.3)

    def test_ready_does_not_wait_for_old_processes(self):
        self.olds([[90]])
        self.put(haproxy, "haproxy_server_stat", lambda b, s: ("UP", 0))
        got = haproxy.op_haproxy_server(
            {"backend": "web", "server": "web-01", "state": "ready", "timeout_s": 30})
        self.assertEqual((got["status"], got["old_processes"], self.slept), ("UP", 0, []))


if __name__ == "__main__":
    import unittest
    unittest.main()
