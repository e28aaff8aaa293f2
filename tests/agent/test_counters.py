"""The canary's counters (src/agent/foobar_agent/counters.py): one backend's servers
read from HAProxy's `show stat`, with a stand-in for the runtime API (issue 22).

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import unittest

from agent_support import AgentTest
from foobar_agent import counters, haproxy
from foobar_agent.core import AgentError
from foobar_agent.ops import OPS

# An excerpt of HAProxy 3.0's show stat: its header names the columns, in any order.
SHOW_STAT = """# pxname,svname,scur,stot,econ,eresp,status,hrsp_5xx,req_tot,rtime,ttime,
www,FRONTEND,1,500,,,OPEN,3,500,,,
web,web-01,0,240,0,1,UP,48,240,12,14,
web,web-02,0,260,2,0,DRAIN,0,260,9,10,
web,BACKEND,0,500,2,1,UP,48,500,11,12,
other,web-01,0,7,0,0,UP,0,7,1,1,
stats,stats-01,0,1,0,0,no check,,,,,
"""


class Counters(AgentTest):
    def runtime(self, text):
        self.put(haproxy, "haproxy_cmd", lambda cmd, sock=None: text if cmd == "show stat" else "")

    def test_the_servers_of_one_backend_with_their_counters(self):
        self.runtime(SHOW_STAT)
        answer = OPS["haproxy-counters"]({"op": "haproxy-counters", "backend": "web"})
        self.assertEqual(answer["servers"], [
            {"server": "web-01", "status": "UP", "req_tot": 240, "hrsp_5xx": 48,
             "econ": 0, "eresp": 1, "rtime": 12},
            {"server": "web-02", "status": "DRAIN", "req_tot": 260, "hrsp_5xx": 0,
             "econ": 2, "eresp": 0, "rtime": 9},
        ])
        # Empty columns count as zero; an unknown backend has no server.
        stats = counters.op_haproxy_counters({"backend": "stats"})["servers"]
        self.assertEqual(stats[0]["req_tot"], 0)
        self.assertEqual(counters.op_haproxy_counters({"backend": "nope"})["servers"], [])

    def test_a_bad_backend_name_or_counter_is_refused(self):
        self.runtime(SHOW_STAT.replace("UP,48,240", "UP,x,240"))
        with self.assertRaises(AgentError) as e:
            counters.op_haproxy_counters({"backend": "web"})
        self.assertIn("hrsp_5xx is 'x'", e.exception.message)
        with self.assertRaises(AgentError):
            counters.op_haproxy_counters({"backend": "web;show info"})


if __name__ == "__main__":
    unittest.main()
