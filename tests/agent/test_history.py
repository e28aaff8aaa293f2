"""The apply history a host keeps (src/agent/foobar_agent/state.py): one record per run
with its final result and the inventory's name for the host (issue 19).

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import os
import tempfile

from agent_support import AgentTest
from foobar_agent import paths, state


class HistoryTest(AgentTest):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.put(paths, "STATE_DIR", tmp.name)
        self.put(paths, "RUNS", os.path.join(tmp.name, "runs"))
        self.put(paths, "HISTORY", os.path.join(tmp.name, "history.jsonl"))

    def test_a_run_rolled_back_after_its_commit_is_one_record_with_its_final_result(self):
        state.append_history({"run_id": "r1", "host": "web-01"}, "applied")
        state.append_history({"run_id": "r2", "host": "web-01"}, "applied")
        state.append_history({"run_id": "r2", "host": "web-01"}, "rolled-back", "web-02 failed")
        state.append_history({"run_id": "r3", "host": "web-01"}, "failed", "nginx -t")
        records = state.op_history({"last": 20})["records"]
        self.assertEqual([(r["run_id"], r["result"]) for r in records],
                         [("r1", "applied"), ("r2", "rolled-back"), ("r3", "failed")])
        self.assertEqual(records[1]["earlier"], ["applied"])
        self.assertEqual(records[1]["error"], "web-02 failed")
        self.assertNotIn("earlier", records[0])
        # --last counts runs, not lines.
        self.assertEqual([r["run_id"] for r in state.op_history({"last": 2})["records"]], ["r2", "r3"])

    def test_the_record_names_the_inventory_host_and_what_the_host_calls_itself(self):
        state.append_history({"run_id": "r1", "host": "web-01"}, "applied")
        state.append_history({"run_id": "r2"}, "applied")  # an older tool sent no name
        first, second = state.op_history({"last": 5})["records"]
        self.assertEqual(first["host"], "web-01")
        self.assertEqual(first["hostname"], os.uname().nodename)
        self.assertEqual(second["host"], os.uname().nodename)

    def test_lines_that_do_not_parse_are_skipped(self):
        state.append_history({"run_id": "r1", "host": "web-01"}, "applied")
        with open(paths.HISTORY, "a") as f:
            f.write("{not json\n[1, 2]\n")
        self.assertEqual(len(state.op_history({})["records"]), 1)
