"""A run on one host as the tool drives it: stage (lock, expected hashes, staged files
beside their targets, validation), commit (backups, swap, service actions and their
checks, restore on failure), abort and rollback, through ops.handle as the requests
arrive, against a temporary root (paths.under) with stand-ins for `service` and a
validator. These were src/agent/selftest.sh's cases that need no real service.

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import base64
import hashlib
import grp
import json
import os
import pwd
import shutil
import tempfile

from agent_support import AgentTest
from foobar_agent import boot, lock, ops, paths, services, session

# `service NAME ACTION` as an init script would answer it: the state in $FAKE_DIR/NAME
# ("running" or absent), an action fails while $FAKE_DIR/NAME.fail exists.
SERVICE = r"""#!/bin/sh
echo "service $*" >>"$FAKE_DIR/log"
state=$FAKE_DIR/$1
case $2 in
status) [ "$(cat "$state" 2>/dev/null)" = running ] ;;
stop) rm -f "$state" ;;
*) [ -e "$state.fail" ] && { echo "$1: $2 failed" >&2; exit 1; }; echo running >"$state" ;;
esac
"""

# A validator (stands in for `haproxy -c -f FILE`): refuses a file that says "bad".
HAPROXY = r"""#!/bin/sh
echo "haproxy $*" >>"$FAKE_DIR/log"
if grep -q bad "$3"; then echo "[ALERT]    (1) : config : parsing [$3:1] : unknown keyword 'bad'"; exit 1; fi
echo "Configuration file is valid"
"""

# The service table as the tool sends it (src/services.rs): here only the validator.
TABLE = {"haproxy": {"pid_file": None, "error_log": None,
                     "validator": {"kind": "haproxy", "argv": ["haproxy", "-c", "-f", "{file}"]}}}

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


class Run(AgentTest):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        paths.under(self.root)
        self.addCleanup(paths.under, "")
        self.put(boot, "INIT_D", self.root + "/etc/init.d")
        self.put(services, "TABLE", {})  # each test's requests bring theirs
        self.etc = self.root + "/etc/demo"
        self.fake = self.root + "/fake"
        for d in (self.etc, self.fake + "/bin", self.root + "/etc/init.d"):
            os.makedirs(d)
        for name, body in (("service", SERVICE), ("haproxy", HAPROXY)):
            with open(os.path.join(self.fake, "bin", name), "w") as f:
                f.write(body)
            os.chmod(os.path.join(self.fake, "bin", name), 0o755)
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update(FAKE_DIR=self.fake, PATH=self.fake + "/bin:" + os.environ.get("PATH", ""))
        self.addCleanup(self.release_all)
        self.running("demo")
        self.n = 0
        self.staged = {}  # run id -> (paths, deletes) of its last stage

    def release_all(self):
        for fd in lock.HELD_LOCKS.values():
            os.close(fd)
        lock.HELD_LOCKS.clear()
        session.STAGED_RUNS.clear()

    # ------------------------------------------------------------ helpers

    def running(self, name):
        with open(os.path.join(self.fake, name), "w") as f:
            f.write("running")

    def log(self):
        try:
            with open(os.path.join(self.fake, "log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def rid(self):
        self.n += 1
        return "run-%d" % self.n

    def ask(self, **req):
        return ops.answer_of(json.dumps(req).encode())

    def ok(self, answer):
        self.assertIs(answer.get("ok"), True, answer)
        return answer

    def error(self, answer, kind):
        self.assertIs(answer.get("ok"), False, answer)
        self.assertEqual(answer["error"]["kind"], kind, answer)
        return answer["error"]

    def file(self, name, text, service="demo"):
        return {"path": os.path.join(self.etc, name), "content_b64": base64.b64encode(text.encode()).decode(),
                "mode": "0640", "owner": ME, "group": MY_GROUP, "service": service}

    # Requests whole, as the tool sends them (the agent checks each against its shape,
    # src/protocol): the fields a case does not care about at their empty values.

    def history_of(self, rid):
        return {"boot": [], "files": [], "host": "test-host", "hosts": {}, "inventory": "inventory.yaml",
                "inventory_hash": "0",
                "run_id": rid, "services": [], "time": "2026-12-03T00:00:00Z", "tool_version": "0", "user": "test"}

    def lock_of(self, rid):
        return {"owner": "test@here", "pid": 1, "run_id": rid, "started": 1.0, "tool_version": "0"}

    def stage(self, rid, files, **extra):
        req = dict(run_id=rid, lock=self.lock_of(rid), lock_wait_s=0, files=files, deletes=[], expect={},
                   install=[], users=[], validate=[], history=self.history_of(rid), service_table=TABLE)
        req.update(extra)
        self.staged[rid] = ([f["path"] for f in files], req["deletes"])
        return self.ask(op="stage", **req)

    def commit(self, rid, actions=(), **extra):
        files, deletes = self.staged.get(rid, ([], []))
        req = dict(run_id=rid, actions=list(actions), boot=[], files=files, deletes=deletes, manifest=[],
                   history=self.history_of(rid))
        req.update(extra)
        return self.ask(op="commit", **req)

    def rollback(self, rid, **extra):
        req = dict(run_id=rid, actions=[], history=self.history_of(rid), lock=self.lock_of(rid))
        req.update(extra)
        return self.ask(op="rollback", **req)

    def observe(self):
        return self.ask(op="observe", certs=[], haproxy=False, max_content=0, packages=[], paths={}, ports=[],
                        services=[], users=[])

    def read(self, name):
        with open(os.path.join(self.etc, name)) as f:
            return f.read()

    def write(self, name, text):
        with open(os.path.join(self.etc, name), "w") as f:
            f.write(text)

    def leftovers(self, rid):
        """Staged files and the run's directory still there (a run that did not commit)."""
        found = [n for n in os.listdir(self.etc) if ".foobar-" in n]
        if os.path.exists(os.path.join(paths.RUNS, rid)):
            found.append(os.path.join(paths.RUNS, rid))
        return found

    def lock_free(self):
        return self.observe()["lock"] is None

    def history(self):
        with open(paths.HISTORY) as f:
            return [json.loads(line) for line in f]

    # ------------------------------------------------------------ cases

    def test_stage_then_commit_swaps_the_files_in_reloads_and_frees_the_lock(self):
        self.write("a.conf", "old a\n")
        rid = self.rid()
        answer = self.ok(self.stage(rid, [self.file("a.conf", "new a\n"), self.file("b.conf", "new b\n")],
                                    expect={os.path.join(self.etc, "a.conf"): sha("old a\n"),
                                            os.path.join(self.etc, "b.conf"): None}))
        self.assertEqual(len(answer["staged"]), 2)
        self.assertEqual(self.read("a.conf"), "old a\n", "staging touches no target")
        self.assertFalse(self.lock_free(), "the run holds the lock until it ends")
        manifest = [{"path": os.path.join(self.etc, "a.conf"), "service": "demo", "mode": "0640", "owner": ME,
                     "group": MY_GROUP, "sha256": sha("new a\n")}]
        done = self.ok(self.commit(rid, [{"service": "demo", "action": "reload",
                                          "check": {"command": ["true"], "timeout_s": 5}}], manifest=manifest))
        self.assertEqual([a["action"] for a in done["actions"]], ["reload"])
        self.assertEqual((self.read("a.conf"), self.read("b.conf")), ("new a\n", "new b\n"))
        st = os.stat(os.path.join(self.etc, "b.conf"))
        self.assertEqual(oct(st.st_mode & 0o777), "0o640")
        self.assertIn("service demo reload", self.log())
        self.assertEqual([n for n in os.listdir(self.etc) if ".foobar-" in n], [])
        self.assertTrue(self.lock_free())
        self.assertEqual(self.observe()["manifest"], manifest)
        self.assertEqual(self.history()[-1]["result"], "applied")

    def test_a_rejected_file_names_the_real_path_and_leaves_nothing_behind(self):
        rid = self.rid()
        target = os.path.join(self.etc, "haproxy.cfg")
        validate = [{"kind": "haproxy", "path": target}]
        err = self.error(self.stage(rid, [self.file("haproxy.cfg", "bad\n", service="haproxy")],
                                    validate=validate), "validation")
        self.assertEqual(err["path"], target)
        self.assertIn("unknown keyword 'bad'", err["message"])
        self.assertNotIn(".foobar-new-", err["output"], "the output names the target, not the staged copy")
        self.assertEqual(self.leftovers(rid), [])
        self.assertTrue(self.lock_free())
        self.assertEqual(self.history()[-1]["result"], "failed")
        # A valid one passes, checked on the staged copy.
        rid = self.rid()
        answer = self.ok(self.stage(rid, [self.file("haproxy.cfg", "good\n", service="haproxy")],
                                    validate=validate))
        self.assertEqual(answer["validated"], [{"kind": "haproxy", "path": target}])
        self.ok(self.ask(op="abort", run_id=rid))

    def test_the_validator_is_the_one_the_service_table_names(self):
        target = os.path.join(self.etc, "haproxy.cfg")
        validate = [{"kind": "haproxy", "path": target}]
        table = {"haproxy": dict(TABLE["haproxy"], validator={
            "kind": "haproxy", "argv": ["haproxy", "-c", "-f", "{file}", "--from-the-table"]})}
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("haproxy.cfg", "good\n")], validate=validate, service_table=table))
        self.assertEqual(self.log()[-1], "haproxy -c -f %s.foobar-new-%s --from-the-table" % (target, rid))
        self.ok(self.ask(op="abort", run_id=rid))
        # A service the table gives no validator: refused, nothing staged.
        rid = self.rid()
        err = self.error(self.stage(rid, [self.file("haproxy.cfg", "good\n")], validate=validate,
                                    service_table={"haproxy": {}}), "request")
        self.assertIn("no validator of kind 'haproxy'", err["message"])
        self.assertEqual(self.leftovers(rid), [])

    def test_a_second_run_is_refused_while_one_holds_the_lock_and_abort_frees_it(self):
        first, second = self.rid(), self.rid()
        self.ok(self.stage(first, [self.file("a.conf", "a\n")]))
        err = self.error(self.stage(second, [self.file("a.conf", "b\n")]), "locked")
        self.assertIn(first, err["message"])
        self.assertTrue(os.path.exists(os.path.join(self.etc, "a.conf.foobar-new-" + first)),
                        "the refused run touched nothing of the first's")
        answer = self.ok(self.ask(op="abort", run_id=first))
        self.assertEqual(answer["removed"], [os.path.join(self.etc, "a.conf")])
        self.assertTrue(answer["released"])
        self.assertEqual(self.leftovers(first), [])
        again = self.ok(self.ask(op="abort", run_id=first))  # idempotent
        self.assertEqual((again["removed"], again["released"]), ([], False))
        self.ok(self.stage(second, [self.file("a.conf", "b\n")]))
        self.ok(self.ask(op="abort", run_id=second))

    def test_a_file_changed_since_observe_is_a_conflict_and_nothing_is_staged(self):
        self.write("a.conf", "changed by hand\n")
        rid = self.rid()
        err = self.error(self.stage(rid, [self.file("a.conf", "new\n")],
                                    expect={os.path.join(self.etc, "a.conf"): sha("observed\n")}), "conflict")
        self.assertEqual(err["actual"], sha("changed by hand\n"))
        self.assertEqual(self.leftovers(rid), [])
        self.assertTrue(self.lock_free())

    def test_a_failed_check_restores_the_previous_files_and_reloads_them(self):
        self.write("a.conf", "old a\n")
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("a.conf", "new a\n"), self.file("new.conf", "created\n")]))
        err = self.error(self.commit(rid, [{"service": "demo", "action": "reload",
                                            "check": {"command": ["false"], "timeout_s": 1}}]), "service")
        self.assertIn("check failed", err["message"])
        self.assertIn("the previous files were restored", err["message"])
        self.assertEqual(self.read("a.conf"), "old a\n")
        self.assertFalse(os.path.exists(os.path.join(self.etc, "new.conf")), "a file new in the run is removed")
        self.assertEqual(self.log().count("service demo reload"), 2, "reloaded again on the restored files")
        self.assertTrue(self.lock_free())
        self.assertEqual(self.history()[-1]["result"], "failed")
        # A failed action: the same.
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("a.conf", "newer a\n")]))
        open(os.path.join(self.fake, "demo.fail"), "w").close()
        err = self.error(self.commit(rid, [{"service": "demo", "action": "restart"}]), "service")
        self.assertIn("demo restart failed (exit 1)", err["message"])
        self.assertEqual(self.read("a.conf"), "old a\n")

    def test_rollback_puts_a_committed_run_back_unless_the_file_changed_since(self):
        self.write("a.conf", "old a\n")
        self.write("gone.conf", "deleted in the run\n")
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("a.conf", "new a\n")], deletes=[os.path.join(self.etc, "gone.conf")]))
        self.ok(self.commit(rid, [{"service": "demo", "action": "reload"}]))
        self.assertFalse(os.path.exists(os.path.join(self.etc, "gone.conf")))
        self.write("a.conf", "edited after the run\n")
        err = self.error(self.rollback(rid), "conflict")
        self.assertIn("changed after run %s committed it" % rid, err["message"])
        self.assertTrue(self.lock_free())
        self.write("a.conf", "new a\n")
        answer = self.ok(self.rollback(rid, actions=[{"service": "demo", "action": "reload"}]))
        self.assertEqual(self.read("a.conf"), "old a\n")
        self.assertEqual(self.read("gone.conf"), "deleted in the run\n")
        self.assertEqual(sorted(answer["restored"]), sorted(os.path.join(self.etc, n) for n in ("a.conf", "gone.conf")))
        self.assertEqual(self.ok(self.rollback(rid))["already"], "rolled-back")
        self.assertEqual(self.history()[-1]["result"], "rolled-back")

    def test_a_retried_stage_starts_again_and_a_commit_needs_the_runs_lock(self):
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("a.conf", "first try\n"), self.file("b.conf", "b\n")]))
        self.ok(self.stage(rid, [self.file("a.conf", "second try\n")]))
        self.assertEqual(sorted(n for n in os.listdir(self.etc) if ".foobar-new-" in n), ["a.conf.foobar-new-" + rid])
        self.ok(self.commit(rid))
        self.assertEqual(self.read("a.conf"), "second try\n")
        err = self.error(self.commit(rid), "locked")
        self.assertIn("does not hold the lock", err["message"])
        other = self.rid()
        self.ok(self.stage(other, [self.file("a.conf", "x\n")]))
        self.error(self.commit(rid), "locked")
        self.ok(self.ask(op="abort", run_id=other))

    def test_a_reload_of_a_stopped_service_starts_it(self):
        os.unlink(os.path.join(self.fake, "demo"))
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("a.conf", "a\n")]))
        done = self.ok(self.commit(rid, [{"service": "demo", "action": "reload",
                                          "check": {"running": True, "timeout_s": 5}}]))
        self.assertEqual(done["actions"][0]["action"], "start")
        self.assertIn("service demo start", self.log())

    def test_the_tools_connection_closing_before_commit_unstages(self):
        rid = self.rid()
        self.ok(self.stage(rid, [self.file("a.conf", "a\n")]))
        from foobar_agent.stage import abandon_staged
        abandon_staged()
        self.assertEqual(self.leftovers(rid), [])
        self.assertTrue(self.lock_free())
        self.assertEqual(self.history()[-1]["result"], "aborted")

    def test_history_lines_are_json_and_old_runs_are_pruned_to_ten(self):
        for i in range(12):
            rid = self.rid()
            self.ok(self.stage(rid, [self.file("a.conf", "v%d\n" % i)]))
            self.ok(self.commit(rid))
        runs = os.listdir(paths.RUNS)
        self.assertEqual(len(runs), 10)
        self.assertIn("run-12", runs)
        records = self.ok(self.ask(op="history", last=5))["records"]
        self.assertEqual([r["run_id"] for r in records], ["run-%d" % i for i in range(8, 13)])

    def test_requests_with_unsafe_paths_are_refused(self):
        for bad in ("relative/path", "/etc/../etc/passwd", "/", paths.STATE_DIR + "/lock.json", "/a//b"):
            f = dict(self.file("a.conf", "x"), path=bad)
            self.error(self.stage(self.rid(), [f]), "request")
        self.error(self.ask(op="stage", run_id="a/b"), "request")
        self.error(self.ask(op="no-such-op"), "request")
        self.assertTrue(self.lock_free())
