"""How the agent waits for a reload's proof and for a health check: it polls at once, then
after 10, 20, 40, 80, 160 ms and every 200 ms up to the check's deadline, so a reload
that shows within milliseconds is confirmed within milliseconds (a flat 200 ms wait
cost every proven reload 200 ms), and a check that never passes still ends at its deadline.

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import itertools
import unittest

from agent_support import AgentTest
from foobar_agent import core, live


class Waits(AgentTest):
    def setUp(self):
        self.fake_clock(live)
        self.put(live, "service_message", lambda name, since, init: "")

    def problems(self, answers):
        """live_problem answers these in turn (None: the new config runs)."""
        it = iter(answers)
        self.put(live, "live_problem", lambda name, check, before, action: next(it))

    def test_the_pauses_double_from_10_ms_to_200_ms(self):
        got = list(itertools.islice(core.pauses(), 8))
        self.assertEqual([round(p, 3) for p in got], [0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2, 0.2])

    def test_a_reload_seen_at_the_third_look_costs_30_ms_of_waiting(self):
        self.problems(["no new workers", "no new workers", None])
        got = live.run_check("nginx", {"live": "nginx", "timeout_s": 15}, "systemd", {}, "reload")
        self.assertIsNone(got)
        self.assertEqual([round(s, 3) for s in self.slept], [0.01, 0.02])

    def test_a_reload_never_seen_fails_at_the_deadline_with_the_problem(self):
        self.problems(itertools.repeat("nginx's master (pid 7) started no new workers"))
        got = live.run_check("nginx", {"live": "nginx", "timeout_s": 2}, "sysv", {}, "reload")
        self.assertIn("started no new workers", got)
        self.assertGreaterEqual(sum(self.slept), 2.0)
        self.assertLess(sum(self.slept), 2.3)
        self.assertEqual(max(self.slept), 0.2)

    def test_a_tcp_check_retries_with_the_same_pauses(self):
        tries = iter([OSError("refused"), OSError("refused"), None])

        def connect(host, port, timeout):
            err = next(tries)
            if err:
                raise err

        self.put(live, "tcp_connect", connect)
        self.assertIsNone(live.run_check("app", {"tcp": "127.0.0.1:8000", "timeout_s": 10}, "sysv"))
        self.assertEqual([round(s, 3) for s in self.slept], [0.01, 0.02])

    def test_a_tcp_check_that_never_connects_names_the_address_and_the_error(self):
        def connect(host, port, timeout):
            raise OSError("connection refused")

        self.put(live, "tcp_connect", connect)
        got = live.run_check("app", {"tcp": "127.0.0.1:8000", "timeout_s": 1}, "sysv")
        self.assertIn("no TCP connection to 127.0.0.1:8000 within 1s: connection refused", got)



class ProcessTable(AgentTest):
    def test_a_process_is_among_its_parents_children(self):
        import os
        self.assertIn(os.getpid(), live.proc_children(os.getppid()))
        self.assertNotIn(os.getpid(), live.proc_children(os.getpid()))

if __name__ == "__main__":
    unittest.main()
