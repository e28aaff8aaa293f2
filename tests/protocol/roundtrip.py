"""Every agent request the tool builds, through the real agent: the requests (a JSON
list, from src/protocol/roundtrip_tests.rs) go one by one through the agent's own entry
(`answer_of`: JSON parsing, the shape check, the op), and the answers come back as a
JSON list on stdout.

The agent (src/agent/foobar_agent) runs on a temporary root (argv[1]): its state directory, the release root and
the files are there. What needs a service, a database or HAProxy is stood in for at the
agent's lowest level (the SQL client's rows, a service action's exit, HAProxy's runtime
API), so that every op runs its own code, request parsing and answer building included.

Run: python3 tests/protocol/roundtrip.py TMPDIR < requests.json
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "src", "agent"))

import importlib  # noqa: E402

from foobar_agent import ops, paths  # noqa: E402  (the package as the tool sends it)

# Every module loaded now (the agent loads an op's modules on its first call), so that the
# stand-ins below reach each module that has the name.
for _file in sorted(os.listdir(os.path.dirname(ops.__file__))):
    if _file.endswith(".py") and _file != "__main__.py":
        importlib.import_module("foobar_agent." + _file[:-3])

SLAVE_HEADER = ["Master_Host", "Master_Port", "Master_User", "Slave_IO_Running", "Slave_SQL_Running",
                "Seconds_Behind_Master", "Last_IO_Error", "Last_SQL_Error", "Last_IO_Errno",
                "Last_SQL_Errno", "Using_Gtid", "Gtid_IO_Pos"]
SLAVE_ROW = ["10.0.0.1", "3306", "repl", "Yes", "Yes", "0", "", "", "0", "0", "Current_Pos", "0-1-5"]


def fake_sql(text, columns=False, timeout=120, extra=()):
    """The rows a MariaDB server would answer, by statement."""
    if columns:  # SHOW SLAVE STATUS
        return SLAVE_HEADER, [SLAVE_ROW]
    for needle, rows in (
            ("MASTER_GTID_WAIT", [["0"]]),
            ("VERSION()", [["10.11.6-MariaDB", "0", "1", "0-1-5", "1"]]),
            ("SCHEMA_NAME LIKE", []),
            ("information_schema.TABLES", [["table", "t1", "BASE TABLE"]]),
            ("COUNT(*)", [["3"]]),
            ("@@read_only, @@gtid_current_pos", [["0", "0-1-5"]]),
            ("@@read_only", [["1"]]),
            ("gtid_binlog_pos", [["0-1-5"]])):
        if needle in text:
            return rows
    return []


def fake_haproxy(cmd, sock=None, limit=None):
    if cmd == "show stat":
        return "# pxname,svname,status,scur,check_status,bck\nweb,web-01,UP,0,L4OK,0\n"
    if cmd.startswith("show events "):
        return ("2026-12-03T21:00:42.530240+00:00 10.0.0.1:50140 [03/Dec/2026:21:00:42.481] "
                "www web/web-01 0/0/0/48/48 200 500 - - ---- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"\n")
    return ""


def stand_in(name, value):
    """`name` is `value` in every module of the agent that has it (a module that
    imported it by name has its own binding)."""
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("foobar_agent") and hasattr(mod, name):
            setattr(mod, name, value)


def agent_on(root):
    state = os.path.join(root, "state")
    os.makedirs(state, exist_ok=True)
    for name, path in (("STATE_DIR", ""), ("LOCK", "lock.json"), ("LOCK_HOLD", "lock.flock"),
                       ("GUARD", ".lock-guard"), ("MANIFEST", "manifest.json"),
                       ("HISTORY", "history.jsonl"), ("RUNS", "runs"), ("AGENT_CACHE", "agent"),
                       ("FW_GUARD", "firewall-guard.json"), ("FW_PREV", "firewall-prev.nft")):
        setattr(paths, name, os.path.join(state, path) if path else state)
    stand_in("HAPROXY_SOCKET", os.path.join(root, "no-haproxy.sock"))
    stand_in("run_sql", fake_sql)
    stand_in("haproxy_cmd", fake_haproxy)
    stand_in("db_observe", lambda spec: {"running": True, "read_only": False, "database_exists": True,
                                         "missing_tables": [], "users": [], "server_id": 1})
    stand_in("service_action", lambda name, action, init: (0, "", action))
    stand_in("service_running", lambda name, init: True)
    stand_in("live_snapshot", lambda name, check: None)
    stand_in("run_check", lambda *args: None)
    stand_in("set_boot", lambda name, enable, init: (0, ""))
    stand_in("firewall_arm", lambda rid, path, seconds: None)
    stand_in("install_packages", lambda pkgs: [])
    stand_in("ensure_users", lambda names: None)
    stand_in("validate_one", lambda v, rid, staged, record, save: {"kind": v["kind"],
                                                                   "path": v.get("path") or v["conf"]})
    stand_in("http_health", lambda check: None)
    stand_in("cert_not_after", lambda path: None)


def main():
    agent_on(sys.argv[1])
    answers = [ops.answer_of(json.dumps(req).encode()) for req in json.load(sys.stdin)]
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
