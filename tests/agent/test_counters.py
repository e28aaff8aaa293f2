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


# `show events foobar-response-times` of HAProxy 2.6 (`format iso`, httplog): web-01's
# answers at 21:00:42.5 and later, web-02's, one of another backend, a redirect (no
# server), a failed connection (Tr -1), and lines that must not be trusted: a startup
# message, a cut line, a Tr beyond a day, a bad date, a request line posing as a prefix.
SHOW_EVENTS = "\n".join([
    '2026-12-03T21:00:40.100000+00:00 10.0.0.1:50100 [03/Dec/2026:21:00:40.050] www web/web-01 0/0/0/900/900 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:42.530240+00:00 10.0.0.1:50140 [03/Dec/2026:21:00:42.481] www web/web-01 0/0/0/48/48 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:42.550458+00:00 10.0.0.1:50148 [03/Dec/2026:21:00:42.544] www web/web-02 0/0/0/6/6 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:43.565628+00:00 [::1]:50158 [03/Dec/2026:21:00:43.264] www~ web/web-01 0/0/0/301/301 500 500 - - ---- 1/1/0/0/0 0/0 "GET /a b HTTP/1.1"',
    '2026-12-03T22:00:43.565628+01:00 10.0.0.1:50159 [03/Dec/2026:21:00:43.264] www web/web-01 0/0/1/48/49 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:44.000000+00:00 10.0.0.1:50160 [03/Dec/2026:21:00:43.575] www other/web-01 0/0/0/7/7 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:44.100000+00:00 10.0.0.1:50161 [03/Dec/2026:21:00:44.100] www www/<NOSRV> 0/-1/-1/-1/0 301 90 - - LR-- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:44.200000+00:00 10.0.0.1:50162 [03/Dec/2026:21:00:44.100] www web/web-02 0/0/-1/-1/3 503 217 - - SC-- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:39.000000+00:00 Proxy www started.',
    '2026-12-03T21:00:45.000000+00:00 10.0.0.1:50163 [03/Dec/2026:21:00:44.9',
    '2026-12-03T21:00:45.100000+00:00 10.0.0.1:50164 [03/Dec/2026:21:00:45.000] www web/web-01 0/0/0/999999999/999999999 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-13-03T21:00:45.200000+00:00 10.0.0.1:50165 [03/Dec/2026:21:00:45.000] www web/web-01 0/0/0/5/5 200 500 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"',
    '2026-12-03T21:00:45.300000+00:00 10.0.0.1:50166 [03/Dec/2026:21:00:45.000] www "GET web/web-01 0/0/0/5/5 200 " HTTP/1.1"',
    '',
])
# 21:00:42.000 UTC, ms since the epoch: the window starts after web-01's 900 ms answer.
SINCE = 1796331642000


class Counters(AgentTest):
    def runtime(self, text, events=SHOW_EVENTS):
        def cmd(command, sock=None, limit=None):
            if command == "show stat":
                return text
            if command == "show events foobar-response-times":
                self.assertEqual(limit, counters.EVENTS_LIMIT)
                return events
            return "No such event sink\n" if command.startswith("show events ") else ""
        self.put(haproxy, "haproxy_cmd", cmd)

    def test_response_times_since_a_moment_per_server_from_the_ring(self):
        self.runtime(SHOW_STAT)
        self.put(counters, "now", lambda: 1796331650.25)
        ring = {"ring": "foobar-response-times", "since_ms": SINCE}
        answer = counters.op_haproxy_counters({"backend": "web", "response_times": ring})
        times = {s["server"]: s["response_ms"] for s in answer["servers"]}
        # web-01: 48 ms twice (one at +01:00 is the same moment as UTC 21:00:43.5), 301 ms
        # (a 500 is still a response time); not the 900 ms before the window.
        self.assertEqual(times, {"web-01": [[48, 2], [301, 1]], "web-02": [[6, 1]]})
        self.assertEqual(answer["skipped"], 5)
        self.assertEqual((answer["timed"], answer["now_ms"]), (True, 1796331650250))
        # Without a ring: not timed, and the counters still answer.
        ring["ring"] = "nope"
        answer = counters.op_haproxy_counters({"backend": "web", "response_times": ring})
        self.assertFalse(answer["timed"])
        self.assertNotIn("response_ms", answer["servers"][0])
        # Not asked: no ring read, no times.
        answer = counters.op_haproxy_counters({"backend": "web"})
        self.assertEqual((answer["timed"], answer["skipped"]), (False, 0))
        with self.assertRaises(AgentError):
            counters.op_haproxy_counters({"backend": "web", "response_times": {"ring": "a b", "since_ms": 1}})
        with self.assertRaises(AgentError):
            counters.op_haproxy_counters({"backend": "web", "response_times": {"ring": "r", "since_ms": -1}})

    def test_parsing_takes_only_the_window_the_backend_and_answered_requests(self):
        times, skipped = counters.parse_events(SHOW_EVENTS, "other", 0)
        self.assertEqual((times, skipped), ({"web-01": {7: 1}}, 5))
        times, _ = counters.parse_events(SHOW_EVENTS, "web", 0)
        self.assertEqual(times["web-01"], {900: 1, 48: 2, 301: 1})
        self.assertEqual(times["web-02"], {6: 1})  # the failed connection has no time
        self.assertEqual(counters.parse_events("", "web", 0), ({}, 0))
        self.assertEqual(counters.parse_events(SHOW_EVENTS, "web", SINCE * 2), ({}, 5))

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
