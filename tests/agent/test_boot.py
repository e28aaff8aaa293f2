"""The agent's start-at-boot code (src/agent/foobar_agent/boot.py) on temporary
directories, with stand-ins for update-rc.d and systemctl that keep Debian's rules:
`update-rc.d NAME defaults` adds links only where there are none, `enable` and
`disable` turn K links into S links and back (and fail when there are no links),
`remove` deletes them.

Run: python3 -m unittest discover -s tests/agent (cargo test --test agent_python runs it).
"""

import os
import shutil
import tempfile
import unittest

from agent_support import AgentTest
from foobar_agent import boot, ops
from foobar_agent.core import AgentError


UPDATE_RC_D = r"""#!/bin/sh
echo "update-rc.d $*" >>"$FAKE_LOG"
rc=$FAKE_ETC/rc2.d n=$1
links() { ls "$rc" | grep -E "^[SK][0-9][0-9]$n\$"; }
case $2 in
defaults) links >/dev/null || ln -s "../init.d/$n" "$rc/S01$n" ;;
enable | disable)
    links >/dev/null || { echo "update-rc.d: error: no runlevel symlinks to modify, aborting!" >&2; exit 1; }
    for l in $(links); do
        if [ "$2" = enable ]; then mv "$rc/$l" "$rc/S${l#?}"; else mv "$rc/$l" "$rc/K${l#?}"; fi
    done ;;
remove) for l in $(links); do rm "$rc/$l"; done ;;
*) exit 2 ;;
esac
"""

# Answers from $FAKE_ETC/states (NAME STATE lines), one line per name in argv order, as
# systemd 257 does (with FAKE_252 set, as 252 does: it stops at a name it cannot find);
# `enable`/`disable` rewrite the name's state.
SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >>"$FAKE_LOG"
verb=$1; shift
case $verb in
is-enabled)
    for n in "$@"; do
        s=$(sed -n "s/^$n //p" "$FAKE_ETC/states")
        if [ -z "$s" ] && [ -n "$FAKE_252" ]; then
            echo "Failed to get unit file state for $n.service: No such file or directory" >&2
            exit 1
        fi
        echo "${s:-not-found}"
    done ;;
show)  # --property=ActiveState,UnitFileState -- NAMES: a block per name, empty ones left out
    shift 2
    for n in "$@"; do
        s=$(sed -n "s/^$n //p" "$FAKE_ETC/states")
        a=$(sed -n "s/^$n //p" "$FAKE_ETC/active")
        echo "ActiveState=${a:-inactive}"
        [ -n "$s" ] && echo "UnitFileState=$s"
        echo
    done ;;
is-active) shift; grep -q "^$1 active$" "$FAKE_ETC/active" ;;
enable) sed -i "s/^$1 .*/$1 enabled/" "$FAKE_ETC/states" ;;
disable) sed -i "s/^$1 .*/$1 disabled/" "$FAKE_ETC/states" ;;
esac
"""


class Boot(AgentTest):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.etc = os.path.join(self.dir, "etc")
        for d in ("rc2.d", "init.d", "systemd/system", "bin"):
            os.makedirs(os.path.join(self.etc, d))
        self.log = os.path.join(self.dir, "log")
        open(self.log, "w").close()
        for name, body in (("update-rc.d", UPDATE_RC_D), ("systemctl", SYSTEMCTL)):
            path = os.path.join(self.etc, "bin", name)
            with open(path, "w") as f:
                f.write(body)
            os.chmod(path, 0o755)
        self.saved_env = dict(os.environ)
        os.environ.update(FAKE_ETC=self.etc, FAKE_LOG=self.log,
                          PATH=os.path.join(self.etc, "bin") + ":" + os.environ.get("PATH", ""))
        self.put(boot, "RC_DIR", os.path.join(self.etc, "rc2.d"))
        self.put(boot, "INIT_D", os.path.join(self.etc, "init.d"))
        self.put(boot, "UNIT_DIRS", (os.path.join(self.etc, "systemd/system"),))

    def tearDown(self):
        os.environ.clear()
        os.environ.update(self.saved_env)
        shutil.rmtree(self.dir)

    def script(self, name):
        with open(os.path.join(self.etc, "init.d", name), "w") as f:
            f.write("#!/bin/sh\n")

    def link(self, name):
        os.symlink("../init.d/" + name[3:], os.path.join(self.etc, "rc2.d", name))

    def rc(self):
        return sorted(os.listdir(os.path.join(self.etc, "rc2.d")))

    def calls(self):
        with open(self.log) as f:
            return f.read().splitlines()

    def test_sysv_an_S_link_in_rc2_is_enabled_a_K_link_or_none_is_not(self):
        for n in ("S01nginx", "K01haproxy", "S02prometheus-nginx-exporter", "S01foobar-app"):
            self.link(n)
        self.assertEqual(boot.boot_enabled(["nginx", "haproxy", "mariadb", "foobar-app"], "sysv"),
                         {"nginx": True, "haproxy": False, "mariadb": False, "foobar-app": True})
        self.assertEqual(self.calls(), [])  # no process

    def test_a_start_enables_a_service_that_was_disabled(self):
        # `update-rc.d nginx disable` left K links: `defaults` alone keeps them.
        self.script("nginx")
        self.link("K01nginx")
        boot.enable_service("nginx", "sysv")
        self.assertEqual(self.rc(), ["S01nginx"])
        self.assertEqual(self.calls(), ["update-rc.d nginx defaults", "update-rc.d nginx enable"])
        # Never linked at all: `defaults` links it, `enable` finds it enabled.
        self.script("foobar-app")
        boot.enable_service("foobar-app", "sysv")
        self.assertIn("S01foobar-app", self.rc())
        # Already enabled: nothing runs.
        before = len(self.calls())
        boot.enable_service("nginx", "sysv")
        self.assertEqual(len(self.calls()), before)

    def test_commit_entries_change_boot_and_undo_puts_it_back(self):
        self.script("nginx")
        self.script("foobar-app")
        self.link("K01nginx")
        self.link("S01foobar-app")
        entries = boot.check_boot([{"service": "nginx", "enable": True},
                                         {"service": "foobar-app", "enable": False}])
        done = []
        boot.apply_boot(entries, "sysv", done)
        self.assertEqual(self.rc(), ["K01foobar-app", "S01nginx"])
        self.assertEqual(done, entries)
        # Applied twice: nothing more to do.
        again = []
        boot.apply_boot(entries, "sysv", again)
        self.assertEqual(again, [])
        self.assertEqual(boot.undo_boot(done, "sysv"), [])
        self.assertEqual(self.rc(), ["K01nginx", "S01foobar-app"])

    def test_the_links_of_a_removed_init_script_are_removed(self):
        self.script("foobar-app")
        self.link("S01foobar-app")
        done = []
        boot.apply_boot([{"service": "foobar-app", "enable": False}], "sysv", done)
        os.unlink(os.path.join(self.etc, "init.d", "foobar-app"))  # the commit deleted it
        boot.drop_dangling(done, "sysv")
        self.assertEqual(self.rc(), [])

    def test_a_failed_change_names_the_service_and_the_tools_words(self):
        with self.assertRaises(AgentError) as e:
            boot.apply_boot([{"service": "nginx", "enable": True}], "sysv", [])
        self.assertEqual(e.exception.service, "nginx")
        self.assertIn("enabling nginx at boot failed", e.exception.message)
        for bad in ("nginx", [{"service": "nginx"}], [{"service": "a b", "enable": True}]):
            with self.assertRaises(AgentError):
                boot.check_boot(bad)

    def test_systemd_one_call_init_script_only_names_first_and_its_states(self):
        units = os.path.join(self.etc, "systemd/system")
        for n in ("nginx", "foobar-app", "dbus", "runtime"):
            open(os.path.join(units, n + ".service"), "w").close()
        self.script("legacy")  # an init script without a unit file
        with open(os.path.join(self.etc, "states"), "w") as f:
            f.write("nginx enabled\nfoobar-app disabled\ndbus static\nruntime enabled-runtime\nlegacy enabled\n")
        names = ["nginx", "foobar-app", "dbus", "runtime", "legacy", "gone"]
        self.assertEqual(boot.boot_enabled(names, "systemd"),
                         {"nginx": True, "foobar-app": False, "dbus": True, "runtime": False,
                          "legacy": True, "gone": False})
        # systemctl hands init-script-only names to systemd-sysv-install and answers them
        # first; a name with neither is not asked (systemd 252 would stop there).
        self.assertEqual(self.calls(), ["systemctl is-enabled legacy nginx foobar-app dbus runtime"])
        done = []
        boot.apply_boot([{"service": "foobar-app", "enable": True}], "systemd", done)
        self.assertEqual(boot.boot_enabled(["foobar-app"], "systemd"), {"foobar-app": True})
        self.assertIn("systemctl enable foobar-app", self.calls())

    def test_systemd_an_answer_short_of_a_line_is_asked_again_one_name_at_a_time(self):
        units = os.path.join(self.etc, "systemd/system")
        for n in ("nginx", "stale", "foobar-app"):
            open(os.path.join(units, n + ".service"), "w").close()
        with open(os.path.join(self.etc, "states"), "w") as f:
            f.write("nginx enabled\nfoobar-app disabled\n")
        os.environ["FAKE_252"] = "1"
        self.assertEqual(boot.boot_enabled(["nginx", "stale", "foobar-app"], "systemd"),
                         {"nginx": True, "stale": None, "foobar-app": False})
        self.assertEqual(len(self.calls()), 4)

    def test_systemd_observe_asks_one_systemctl_show_for_every_unit(self):
        from foobar_agent import services
        units = os.path.join(self.etc, "systemd/system")
        for n in ("nginx", "haproxy", "foobar-app"):
            open(os.path.join(units, n + ".service"), "w").close()
        self.script("legacy")  # an init script without a unit file: asked as before
        with open(os.path.join(self.etc, "states"), "w") as f:
            f.write("nginx enabled\nhaproxy disabled\nlegacy enabled\n")
        with open(os.path.join(self.etc, "active"), "w") as f:
            f.write("nginx active\nhaproxy reloading\nlegacy active\n")
        got = services.observe_services(["nginx", "haproxy", "foobar-app", "legacy"], "systemd")
        self.assertEqual({n: (s["running"], s["enabled"]) for n, s in got.items()},
                         {"nginx": (True, True), "haproxy": (True, False),
                          "foobar-app": (False, False), "legacy": (True, True)})
        self.assertEqual(self.calls(), [
            "systemctl show --property=ActiveState,UnitFileState -- nginx haproxy foobar-app",
            "systemctl is-enabled legacy", "systemctl is-active --quiet legacy"])
        # An answer that is not one block per unit: each asked as before.
        self.put(boot, "capture", lambda argv, **kw: (0, "ActiveState=active\n", "")
                 if argv[1] == "show" else (0, "enabled\n", ""))
        self.assertEqual(boot.systemd_show(["nginx", "haproxy"]), {})

    def test_observe_reports_each_service_enabled_or_not(self):
        self.link("S01nginx")
        self.link("K01haproxy")
        answer = ops.OPS["observe"]({"services": ["nginx", "haproxy"]})  # the op alone
        if answer["init"] != "sysv":
            self.skipTest("this machine runs systemd")
        self.assertTrue(answer["services"]["nginx"]["enabled"])
        self.assertFalse(answer["services"]["haproxy"]["enabled"])


if __name__ == "__main__":
    unittest.main()
