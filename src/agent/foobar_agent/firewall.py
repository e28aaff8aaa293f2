"""The firewall's anti-lockout guard. Loading a new ruleset arms a guard first: a detached process (its own session, so it
outlives the SSH connection that started it) that restores the previous ruleset and
file when the deadline passes unless the tool, over a FRESH SSH connection, confirms
the new one. Whoever renames the token first (confirm or guard) wins."""

import os
import sys
import time

from . import paths
from .core import AgentError, run_id_of, subprocess
from .files import read_json, remove_quiet, write_json_atomic
from .proc import child_env, run_split
from .state import backup_path, ensure_state_dir


FW_SERVICE = "foobar-firewall"
FW_TABLE = ["inet", "foobar"]
FW_GUARD_CODE = r'''
import json, os, shutil, subprocess, sys, time
token, deadline = sys.argv[1], float(sys.argv[2])
while time.time() < deadline:
    if not os.path.exists(token):
        sys.exit(0)
    time.sleep(0.25)
try:
    os.rename(token, token + ".firing")
except OSError:
    sys.exit(0)
with open(token + ".firing") as f:
    t = json.load(f)
null = subprocess.DEVNULL
t["nft_exit"] = subprocess.call(["nft", "-f", t["prev"]], stdin=null, stdout=null, stderr=null)
try:
    if t.get("backup"):
        shutil.copy2(t["backup"], t["file"])
    elif os.path.exists(t["file"]):
        os.unlink(t["file"])
except OSError as e:
    t["file_error"] = str(e)
t["fired"] = time.time()
with open(token + ".fired.tmp", "w") as f:
    json.dump(t, f)
os.replace(token + ".fired.tmp", token + ".fired")
os.unlink(token + ".firing")
'''


def firewall_arm(rid, path, seconds):
    """Save the live table and start the guard before a new ruleset is loaded."""
    ensure_state_dir()
    code, out, _err = run_split(["nft", "list", "table"] + FW_TABLE, timeout=30)
    prev = "table inet foobar\ndelete table inet foobar\n" + (out if code == 0 else "")
    with open(paths.FW_PREV + ".tmp", "w") as f:
        f.write(prev)
    os.chmod(paths.FW_PREV + ".tmp", 0o600)
    os.replace(paths.FW_PREV + ".tmp", paths.FW_PREV)
    backup = backup_path(rid, path)
    remove_quiet(paths.FW_GUARD + ".fired")
    deadline = time.time() + float(seconds)
    write_json_atomic(paths.FW_GUARD, {"run_id": rid, "prev": paths.FW_PREV, "file": path,
                                 "backup": backup if os.path.exists(backup) else None,
                                 "deadline": deadline, "seconds": float(seconds)})
    null = subprocess.DEVNULL
    subprocess.Popen([sys.executable, "-I", "-S", "-c", FW_GUARD_CODE, paths.FW_GUARD, repr(deadline)],
                     stdin=null, stdout=null, stderr=null, close_fds=True, start_new_session=True,
                     cwd="/", env=child_env())


def firewall_disarm():
    """The commit failed before the fresh-connection test: the commit's own restore
    puts the old ruleset back, so the guard must not fire later."""
    try:
        os.unlink(paths.FW_GUARD)
    except FileNotFoundError:
        pass


def op_firewall_confirm(req):
    """Called over a fresh SSH connection: it works, so the guard is cancelled."""
    rid = run_id_of(req)
    try:
        os.rename(paths.FW_GUARD, paths.FW_GUARD + ".confirmed")
    except FileNotFoundError:
        return dict(firewall_guard_state(rid), confirmed=False, ok=True)
    t = read_json(paths.FW_GUARD + ".confirmed", {})
    remove_quiet(paths.FW_GUARD + ".confirmed")
    if t.get("run_id") != rid:
        raise AgentError("conflict", "the firewall guard belongs to run %s, not %s" % (t.get("run_id"), rid))
    return {"ok": True, "confirmed": True, "fired": False}


def firewall_guard_state(rid):
    if os.path.exists(paths.FW_GUARD) or os.path.exists(paths.FW_GUARD + ".firing"):
        return {"pending": True, "fired": False}
    t = read_json(paths.FW_GUARD + ".fired", None)
    if t and t.get("run_id") == rid:
        return {"pending": False, "fired": True, "nft_exit": t.get("nft_exit"),
                "file_error": t.get("file_error"), "after_s": t.get("seconds")}
    return {"pending": False, "fired": False}


def op_firewall_guard(req):
    return dict(firewall_guard_state(run_id_of(req)), ok=True)
