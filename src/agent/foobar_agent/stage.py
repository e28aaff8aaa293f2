"""Phase 1 of a run: stage (lock the host, check the expected hashes, install packages and
users, write each file beside its target as TARGET.foobar-new-RUNID, validate), and
abort (unstage: remove what stage wrote, free the lock), also when the tool's
connection closes before its commit."""

import grp
import os
import pwd

from . import paths
from .core import AgentError, b64decode, hashlib, parse_mode, run_id_of, safe_name, safe_path
from .files import live_sha, read_json, remove_quiet, write_json_atomic
from .lock import release_lock, take_lock
from .packages import install_packages
from .release import ensure_users
from .session import STAGED_RUNS
from .state import append_history, cleanup_stage, ensure_state_dir, load_staged, run_dir
from .validate import validate_one


def staged_name(path, rid):
    return "%s.foobar-new-%s" % (path, rid)


def make_parents(path, created):
    """Create missing parent directories (0755, root), recording them outermost first."""
    missing = []
    d = os.path.dirname(path)
    while not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        created.append(d)


def write_staged(entry, rid, record, save):
    path = entry["path"]
    try:
        data = b64decode(entry.get("content_b64", ""))
    except (ValueError, TypeError):
        raise AgentError("request", "content_b64 of %s is not valid base64" % path, path=path)
    mode = parse_mode(entry.get("mode"))
    try:
        uid = pwd.getpwnam(entry.get("owner") or "root").pw_uid
        gid = grp.getgrnam(entry.get("group") or "root").gr_gid
    except KeyError as e:
        raise AgentError("io", "unknown owner/group for %s: %s" % (path, e), path=path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise AgentError("request", "%s is a directory on the host" % path, path=path)
    make_parents(path, record["dirs"])
    new = staged_name(path, rid)
    record["files"].append({"path": path, "staged": new, "service": entry.get("service"),
                            "sha256": hashlib.sha256(data).hexdigest()})
    save()  # recorded before it exists, so a crash can always be cleaned up
    if os.path.lexists(new):
        os.unlink(new)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def op_stage(req):
    rid = run_id_of(req)
    files = req.get("files") or []
    for f in files:
        if not isinstance(f, dict):
            raise AgentError("request", "files entries must be objects")
        safe_path(f.get("path"))
        parse_mode(f.get("mode"))
    targets = [f["path"] for f in files]
    if len(set(targets)) != len(targets):
        raise AgentError("request", "a path is listed twice in files")
    deletes = [safe_path(p, "deletes") for p in req.get("deletes") or []]
    expect = req.get("expect") or {}
    for p in expect:
        safe_path(p, "expect")
    install = [safe_name(p, "package") for p in req.get("install") or []]
    validate = req.get("validate") or []
    history = req.get("history")

    if os.path.exists(os.path.join(run_dir(rid), "backup.json")):
        raise AgentError("request", "run %s was already committed on this host" % rid)
    ensure_state_dir()
    # A run refused by another's lock touched nothing here and writes no history
    # (it does not hold the lock that guards history.jsonl).
    taken = take_lock(req, rid)
    record = {"run_id": rid, "files": [], "dirs": [], "stage_dirs": [], "deletes": deletes}
    rdir = run_dir(rid)

    def save():
        write_json_atomic(os.path.join(rdir, "staged.json"), record)

    try:
        old = load_staged(rid)
        if old:  # a retried stage of the same run: start from scratch
            cleanup_stage(rid, old)
        os.makedirs(rdir, mode=0o700, exist_ok=True)
        save()
        for p, want in expect.items():
            got = live_sha(p)
            if got != want:
                raise AgentError("conflict", "%s changed on the host since it was observed: expected %s, found %s"
                                 % (p, want or "no file", got or "no file"), path=p, expected=want, actual=got)
        installed = install_packages(install)
        ensure_users(req.get("users") or [])  # release.py
        for f in files:
            write_staged(f, rid, record, save)
        staged = {f["path"]: f["staged"] for f in record["files"]}
        checked = [validate_one(v, rid, staged, record, save) for v in validate]
    except BaseException as e:
        try:
            cleanup_stage(rid, record)
            msg = e.message if isinstance(e, AgentError) else "%s: %s" % (type(e).__name__, e)
            append_history(history, "failed", msg)
        finally:
            release_lock(rid)
        raise
    STAGED_RUNS[rid] = history  # undone if the tool goes away before it commits (main)
    answer = {"ok": True, "staged": [{"path": f["path"], "staged": f["staged"]} for f in record["files"]],
              "installed": installed, "validated": checked}
    if taken.get("replaced_stale"):
        answer["replaced_stale_lock"] = taken["replaced_stale"]
    return answer


def op_abort(req):
    rid = run_id_of(req)
    STAGED_RUNS.pop(rid, None)
    rdir = run_dir(rid)
    removed = []
    try:
        record = read_json(os.path.join(rdir, "staged.json"))
    except ValueError:
        record = None
    committed = os.path.exists(os.path.join(rdir, "backup.json"))
    if record and not committed:
        removed = [f["path"] for f in record.get("files", []) if os.path.lexists(f["staged"])]
        cleanup_stage(rid, record)
    elif not committed:
        remove_quiet(rdir)
    released = release_lock(rid)
    return {"ok": True, "removed": removed, "released": released, "committed": committed}


def abandon_staged():
    """The tool's connection closed while a run it staged here was not committed (the
    tool gave up on this host): remove the staged files, free the lock, and say so in
    the host's history."""
    for rid, history in list(STAGED_RUNS.items()):
        STAGED_RUNS.pop(rid, None)
        if os.path.exists(os.path.join(run_dir(rid), "backup.json")):
            continue  # the commit ran (and undid itself if the tool had gone)
        try:
            held = read_json(paths.LOCK, {}) or {}
        except ValueError:
            held = {}
        if isinstance(held, dict) and held.get("run_id") == rid:
            append_history(history, "aborted", "the tool's connection to this host was lost "
                           "before the commit: nothing was changed, the staged files were removed")
        op_abort({"run_id": rid})

