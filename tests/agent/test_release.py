"""`rollback` goes back to the release served before the current one: a switch touches
the release it serves, so release_observe's order is the order releases were last
served (or uploaded, if never served). Deploy A, deploy B, apply A again, deploy C:
rollback goes to A, not to B (the one uploaded before C).

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import os
import shutil
import tempfile
import time

from agent_support import AgentTest
from foobar_agent import release


class ServedOrder(AgentTest):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        self.put(release, "init_system", lambda: "systemd")
        self.put(release, "service_action", lambda name, action, init: (0, "", action))
        self.put(release, "http_health", lambda check: None)

    def upload(self, rid):
        d = os.path.join(self.root, "releases", rid)
        os.makedirs(d)
        open(os.path.join(d, ".foobar-release"), "w").close()
        time.sleep(0.02)  # file times move by the kernel's coarse clock (a few ms)

    def switch(self, rid):
        got = release.op_release_switch({"root": self.root, "id": rid, "service": "foobar-app", "keep": 5})
        time.sleep(0.02)
        return got

    def observed(self):
        return release.release_observe({"root": self.root})

    def test_a_release_served_again_is_the_newest_and_rollback_from_the_next_goes_to_it(self):
        for rid in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
            self.upload(rid)
            self.switch(rid)
        self.assertEqual(self.switch("aaaaaaaaaaaa")["previous"], "bbbbbbbbbbbb")
        self.upload("cccccccccccc")
        self.switch("cccccccccccc")
        got = self.observed()
        self.assertEqual(got["current"], "cccccccccccc")
        # rollback's target: the release before the current one in this order.
        self.assertEqual(got["releases"], ["bbbbbbbbbbbb", "aaaaaaaaaaaa", "cccccccccccc"])

    def test_the_switch_itself_touches_the_release_it_serves(self):
        self.upload("aaaaaaaaaaaa")
        self.upload("bbbbbbbbbbbb")
        self.assertEqual(self.observed()["releases"], ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
        self.switch("aaaaaaaaaaaa")
        self.assertEqual(self.observed()["releases"], ["bbbbbbbbbbbb", "aaaaaaaaaaaa"])


if __name__ == "__main__":
    import unittest
    unittest.main()
