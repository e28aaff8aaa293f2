"""What the agent does for a service follows the service table the tool sends
(src/services.rs, `agent_table_of`), not names of its own: the load balancer whose
server state is saved around a reload, the database servers observe probes.

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import unittest

from agent_support import AgentTest
from foobar_agent import services


class ServiceTable(AgentTest):
    def setUp(self):
        self.saved, self.ran = [], []
        self.put(services, "save_haproxy_state", lambda: self.saved.append(True))
        self.put(services, "service_running", lambda name, init: True)
        self.put(services, "run", lambda argv, **kw: (self.ran.append(argv), (0, ""))[1])
        self.put(services, "TABLE", {})

    def test_the_server_state_is_saved_for_the_row_that_says_so(self):
        services.learn({"haproxy": {}, "balancer": {"server_state": True}})
        services.service_action("haproxy", "reload", "sysv")
        self.assertEqual(self.saved, [])
        services.service_action("balancer", "reload", "sysv")
        self.assertEqual(self.saved, [True])
        self.assertEqual(self.ran, [["service", "haproxy", "reload"], ["service", "balancer", "reload"]])

    def test_the_database_servers_are_the_tables(self):
        services.learn({"mariadb": {"database": False}, "pgsql": {"database": True},
                        "mysql": {"database": True}, "nginx": {}})
        self.assertEqual(services.units_where("database"), ["pgsql", "mysql"])


if __name__ == "__main__":
    unittest.main()
