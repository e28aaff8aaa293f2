"""What the agent's tests share: the package imported from src/agent (as the tool sends
it, src/remote/agent.rs), and a base class that undoes every module attribute a test
moved (a temporary directory in place of a host path, a stand-in function).

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import os
import sys
import types
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "src", "agent"))

import foobar_agent  # noqa: E402  (after the path above)


class AgentTest(unittest.TestCase):
    def put(self, module, name, value):
        """module.name = value for this test only."""
        old = getattr(module, name)
        setattr(module, name, value)
        self.addCleanup(setattr, module, name, old)

    def fake_clock(self, module, start=1000.0):
        """module's time.sleep and now() on a clock that only sleeping moves: sets
        self.clock ([seconds]) and self.slept (every sleep asked for)."""
        self.clock, self.slept = [start], []

        def sleep(seconds):
            self.slept.append(seconds)
            self.clock[0] += seconds

        self.put(module, "time", types.SimpleNamespace(sleep=sleep))
        self.put(module, "now", lambda: self.clock[0])


__all__ = ["ROOT", "foobar_agent", "AgentTest"]
