"""Phase 2 of a run: commit (back up, swap the staged files in, run the service actions
and their checks; on any failure restore the backups and reload again), and rollback
of a committed run later."""

import os

from . import paths
from .actions import check_actions, reload_again, run_actions
from .boot import apply_boot, check_boot, drop_dangling, undo_boot
from .core import AgentError, now, run_id_of, safe_path
from .files import copy_file, copy_preserving, fsync_dir, live_sha, read_json, remove_quiet, restore_file, write_json_atomic
from .firewall import firewall_disarm
from .lock import release_lock, require_lock, take_lock
from .services import init_system, service_action
from .session import STAGED_RUNS, ensure_controller
from .state import append_history, backup_path, load_staged, original_path, prune_runs, run_dir


def restore_backups(rid, entries, dirs):
    """Undo a commit: put back files that existed, remove those that did not. Best effort."""
    problems = []
    for e in reversed(entries):
        try:
            if e["existed"]:
                restore_file(backup_path(rid, e["path"]), e["path"], rid)
            elif e.get("put_back"):
                remove_quiet(e["path"])  # the original went back where there was no file
            elif e["kind"] == "replace" and (e.get("replaced") or live_sha(e["path"]) == e.get("new_sha256")):
                remove_quiet(e["path"])  # new in this run (by hash: a crashed commit did not record it)
        except OSError as err:
            problems.append("%s: %s" % (e["path"], err))
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass
    return problems


def managed_paths():
    """The paths the tool managed after its last commit here (its manifest)."""
    try:
        entries = read_json(paths.MANIFEST, []) or []
    except ValueError:
        return set()
    return {e.get("path") for e in entries if isinstance(e, dict)}


def keep_original(p, managed):
    """Keeps, once, the file that the first apply to path p replaces (the distribution's
    nginx.conf, or one made by hand), to put it back when a role leaves the host."""
    if p not in managed and os.path.lexists(p) and not os.path.lexists(original_path(p)):
        copy_preserving(p, original_path(p))


def remove_or_put_back(e, rid):
    """A file whose role left the host: the original kept at its first apply goes back
    in its place, else it is removed."""
    if e.get("original"):
        restore_file(original_path(e["path"]), e["path"], rid)
        e["put_back"] = True
    elif e["existed"]:
        os.unlink(e["path"])


def op_commit(req):
    rid = run_id_of(req)
    rdir = run_dir(rid)
    require_lock(rid)
    try:
        return commit_checked(req, rid, rdir)
    except AgentError as e:
        if e.kind == "request":  # refused before anything changed: the lock goes with it
            release_lock(rid)
        raise


def commit_checked(req, rid, rdir):
    STAGED_RUNS.pop(rid, None)  # from here the commit undoes itself if the tool goes away
    actions = check_actions(req.get("actions") or [])
    boot = check_boot(req.get("boot") or [])  # boot.py
    history = req.get("history")
    bj = os.path.join(rdir, "backup.json")
    if os.path.exists(bj):
        raise AgentError("request", "run %s is already committed on this host" % rid)
    record = load_staged(rid)
    if not record:
        raise AgentError("request", "run %s has nothing staged on this host" % rid)
    staged = {f["path"]: f for f in record["files"]}
    wanted = req.get("files")
    wanted = list(staged) if wanted is None else [safe_path(p) for p in wanted]
    for p in wanted:
        if p not in staged:
            raise AgentError("request", "%s was not staged in run %s" % (p, rid), path=p)
        if not os.path.isfile(staged[p]["staged"]):
            raise AgentError("io", "staged file %s has disappeared" % staged[p]["staged"], path=p)
    deletes = req.get("deletes")
    deletes = record.get("deletes", []) if deletes is None else [safe_path(p, "deletes") for p in deletes]
    init = init_system()

    entries = []
    state = {"run_id": rid, "state": "committing", "entries": entries, "actions": actions,
             "had_manifest": os.path.exists(paths.MANIFEST), "dirs": record.get("dirs", []), "boot": []}
    changed = False
    try:
        ensure_controller()
        # 1. back up everything first, and record it, before touching any target
        if state["had_manifest"]:
            copy_file(paths.MANIFEST, os.path.join(rdir, "manifest.prev.json"))
        managed = managed_paths()
        for p in wanted:
            existed = os.path.lexists(p)
            if existed:
                copy_preserving(p, backup_path(rid, p))
                keep_original(p, managed)
            entries.append({"path": p, "existed": existed, "kind": "replace", "replaced": False,
                            "new_sha256": staged[p]["sha256"]})
        for p in deletes:
            existed = os.path.lexists(p)
            if existed:
                copy_preserving(p, backup_path(rid, p))
            entries.append({"path": p, "existed": existed, "kind": "delete",
                            "original": os.path.lexists(original_path(p))})
        write_json_atomic(bj, state)
        # A service whose role leaves the host stops while its files (its init script)
        # are still there.
        stops = [a for a in actions if a["action"] == "stop"]
        others = [a for a in actions if a["action"] != "stop"]
        stopped = run_actions(stops, init, rid, watch=True)
        # ... and is off at boot (systemctl disable needs its unit file).
        apply_boot([b for b in boot if not b["enable"]], init, state["boot"])
        # 2. swap files in
        ensure_controller()
        for e in entries:
            changed = True
            if e["kind"] == "replace":
                os.replace(staged[e["path"]]["staged"], e["path"])
                e["replaced"] = True
            else:
                remove_or_put_back(e, rid)
        for d in sorted({os.path.dirname(e["path"]) for e in entries}):
            fsync_dir(d)
        # 3. services
        done = stopped + run_actions(others, init, rid, watch=True)
        apply_boot([b for b in boot if b["enable"]], init, state["boot"])
        drop_dangling(state["boot"], init)
        ensure_controller()  # the last moment a commit can still be undone
    except BaseException as e:
        if any(a.get("guard") for a in actions):
            firewall_disarm()  # the restore below puts the old ruleset back itself
        problems = restore_backups(rid, entries, state["dirs"]) if changed else []
        for f in record["files"]:
            remove_quiet(f["staged"])
        problems += undo_boot(state["boot"], init)
        not_back = []
        if changed:
            try:
                not_back = reload_again([a for a in actions if a["action"] != "stop"], init)
            except Exception as again:
                not_back = ["%s: %s" % (type(again).__name__, again)]
        for a in actions:
            if a["action"] == "stop":  # its files are back: so is the service
                try:
                    service_action(a["service"], "start", init)
                except Exception:
                    pass
        msg = e.message if isinstance(e, AgentError) else "%s: %s" % (type(e).__name__, e)
        if problems:
            msg += "; RESTORING FAILED for: " + "; ".join(problems)
        elif changed:
            msg += "; the previous files were restored"
        if not_back:
            msg += "; after the restore these do NOT run them: " + "; ".join(not_back)
        gone = isinstance(e, AgentError) and e.kind == "gone"
        state["state"] = "aborted" if gone else "restored"
        try:
            write_json_atomic(bj, state)
            append_history(history, "aborted" if gone else "failed", msg)
        finally:
            release_lock(rid)
        if isinstance(e, AgentError):
            e.message = msg
            raise
        if isinstance(e, OSError):
            raise AgentError("io", msg, path=e.filename)
        raise
    if req.get("manifest") is not None:
        write_json_atomic(paths.MANIFEST, req["manifest"])
    state.update(state="committed", committed=now())
    write_json_atomic(bj, state)
    append_history(history, "applied")
    prune_runs(rid)
    release_lock(rid)
    return {"ok": True, "actions": done, "boot": state["boot"]}


def op_rollback(req):
    rid = run_id_of(req)
    rdir = run_dir(rid)
    actions = check_actions(req.get("actions") or [])
    history = req.get("history")
    bj = os.path.join(rdir, "backup.json")
    try:
        state = read_json(bj)
    except ValueError:
        state = None
    if not state:
        raise AgentError("request", "run %s has no committed changes on this host" % rid)
    if state.get("state") in ("restored", "aborted", "rolled-back"):
        return {"ok": True, "restored": [], "actions": [], "already": state["state"]}
    take_lock(req, rid)
    entries = state.get("entries", [])
    try:
        if not req.get("force"):
            for e in entries:
                if e["kind"] == "replace" and e.get("replaced", True) and live_sha(e["path"]) != e.get("new_sha256"):
                    raise AgentError("conflict", "%s changed after run %s committed it: not rolling back"
                                     % (e["path"], rid), path=e["path"])
        problems = restore_backups(rid, entries, state.get("dirs", []))
        problems += undo_boot(state.get("boot"), init_system())  # boot.py: what the run changed at boot
        for f in (load_staged(rid) or {}).get("files", []):
            remove_quiet(f["staged"])  # left over if a commit crashed half-way
        if problems:
            raise AgentError("io", "rollback could not restore: " + "; ".join(problems))
        prev = os.path.join(rdir, "manifest.prev.json")
        if os.path.exists(prev):
            write_json_atomic(paths.MANIFEST, read_json(prev))
        elif not state.get("had_manifest", True):
            remove_quiet(paths.MANIFEST)
        state["state"] = "rolled-back"
        write_json_atomic(bj, state)
        # A service stopped by the run comes back with its files.
        actions = [dict(a, action="start", check=None) if a["action"] == "stop" else a for a in actions]
        done = run_actions(actions, init_system())
    except BaseException as e:
        msg = e.message if isinstance(e, AgentError) else "%s: %s" % (type(e).__name__, e)
        try:
            append_history(history, "failed", "rollback: " + msg)
        finally:
            release_lock(rid)
        raise
    append_history(history, "rolled-back")
    release_lock(rid)
    return {"ok": True, "restored": [e["path"] for e in entries], "actions": done}

