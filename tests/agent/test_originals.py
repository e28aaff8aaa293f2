"""Clean removals (src/agent/foobar_agent/commit.py, issue 19): the file a first apply
replaces is kept once, and goes back in place when the tool stops managing the path.

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import json
import os
import tempfile

from agent_support import AgentTest
from foobar_agent import commit, paths
from foobar_agent.state import original_path


class OriginalsTest(AgentTest):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name
        state = os.path.join(self.root, "state")
        self.put(paths, "STATE_DIR", state)
        self.put(paths, "MANIFEST", os.path.join(state, "manifest.json"))
        self.put(paths, "ORIGINALS", os.path.join(state, "originals"))
        self.conf = os.path.join(self.root, "etc", "nginx", "nginx.conf")
        os.makedirs(os.path.dirname(self.conf))
        self.write(self.conf, "the distribution's nginx.conf\n")
        os.chmod(self.conf, 0o644)

    def write(self, path, text):
        with open(path, "w") as f:
            f.write(text)

    def read(self, path):
        with open(path) as f:
            return f.read()

    def manage(self, *paths_):
        os.makedirs(paths.STATE_DIR, exist_ok=True)
        self.write(paths.MANIFEST, json.dumps([{"path": p} for p in paths_]))

    def test_the_first_apply_keeps_the_file_it_replaces_and_later_ones_do_not(self):
        commit.keep_original(self.conf, commit.managed_paths())
        self.assertEqual(self.read(original_path(self.conf)), "the distribution's nginx.conf\n")
        self.assertEqual(os.stat(original_path(self.conf)).st_mode & 0o777, 0o644)
        # Now the tool's file is there and managed: a later apply keeps nothing new.
        self.write(self.conf, "the tool's nginx.conf\n")
        self.manage(self.conf)
        commit.keep_original(self.conf, commit.managed_paths())
        self.assertEqual(self.read(original_path(self.conf)), "the distribution's nginx.conf\n")

    def test_a_removal_puts_the_original_back_or_removes_the_file(self):
        commit.keep_original(self.conf, set())
        self.write(self.conf, "the tool's nginx.conf\n")
        entry = {"path": self.conf, "existed": True, "kind": "delete",
                 "original": os.path.lexists(original_path(self.conf))}
        commit.remove_or_put_back(entry, "r1")
        self.assertEqual(self.read(self.conf), "the distribution's nginx.conf\n")
        self.assertTrue(entry["put_back"])

        other = os.path.join(self.root, "etc", "foobar-firewall.nft")
        self.write(other, "made by the tool, nothing before it\n")
        entry = {"path": other, "existed": True, "kind": "delete",
                 "original": os.path.lexists(original_path(other))}
        commit.remove_or_put_back(entry, "r1")
        self.assertFalse(os.path.lexists(other))

    def test_undoing_a_put_back_where_no_file_was_removes_it_again(self):
        commit.keep_original(self.conf, set())
        os.unlink(self.conf)  # removed by hand since
        entry = {"path": self.conf, "existed": False, "kind": "delete", "original": True}
        commit.remove_or_put_back(entry, "r1")
        self.assertTrue(os.path.exists(self.conf))
        self.assertEqual(commit.restore_backups("r1", [entry], []), [])
        self.assertFalse(os.path.lexists(self.conf))
