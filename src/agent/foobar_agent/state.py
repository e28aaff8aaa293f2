"""The agent's state directory (paths.py): each run's directory (staged.json, backups),
the history of applies, and pruning of old runs and old cached agent versions."""

import json
import os
import stat
import sys

from . import paths
from .core import now
from .files import read_json, remove_quiet


KEEP_RUNS = 10


def ensure_state_dir():
    os.makedirs(paths.RUNS, mode=0o700, exist_ok=True)
    for d in (paths.STATE_DIR, paths.RUNS):
        if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
            os.chmod(d, 0o700)


def run_dir(rid):
    return os.path.join(paths.RUNS, rid)


def last_history():
    try:
        with open(paths.HISTORY, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = [l for l in f.read().splitlines() if l.strip()]
    except FileNotFoundError:
        return None
    if not lines:
        return None
    try:
        return json.loads(lines[-1].decode("utf-8"))
    except ValueError:
        return None


def append_history(record, result, error=None):
    if not isinstance(record, dict):
        return
    rec = dict(record)
    # `host` is the inventory's name for this host (sent by the tool); `hostname` what
    # the host calls itself.
    rec.update(result=result, finished=now(), hostname=os.uname().nodename)
    if not isinstance(rec.get("host"), str):
        rec["host"] = rec["hostname"]
    if error is not None:
        rec["error"] = error
    line = (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8")
    ensure_state_dir()
    fd = os.open(paths.HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def cleanup_stage(rid, record):
    for f in record.get("files", []):
        remove_quiet(f["staged"])
    for d in record.get("stage_dirs", []):
        remove_quiet(d)
    for d in reversed(record.get("dirs", [])):
        try:
            os.rmdir(d)
        except OSError:
            pass
    remove_quiet(run_dir(rid))


def backup_path(rid, target):
    return os.path.join(run_dir(rid), "backup", target.lstrip("/"))


def original_path(target):
    """Where the file a first apply replaced at `target` is kept (paths.ORIGINALS)."""
    return os.path.join(paths.ORIGINALS, target.lstrip("/"))


def prune_agent_cache(keep=3):
    """The bootstrap keeps each agent version it ran in paths.AGENT_CACHE, as the package
    foobar_agent_ID/ (its compiled code, code.TAG.bin): keep this one and the `keep` newest
    others. An older tool's single-file copies (foobar_agent_ID.py, compiled beside it
    in __pycache__) are pruned the same way."""
    me = __name__.rpartition(".")[0]  # this package's name: foobar_agent_ID
    try:
        names = [n for n in os.listdir(paths.AGENT_CACHE) if n.startswith("foobar_agent_")]
    except OSError:
        return
    names.sort(key=lambda n: os.stat(os.path.join(paths.AGENT_CACHE, n)).st_mtime, reverse=True)
    for n in [n for n in names if n != me][keep:]:
        remove_quiet(os.path.join(paths.AGENT_CACHE, n))
        if n.endswith(".py"):
            remove_quiet(os.path.join(paths.AGENT_CACHE, "__pycache__", "%s.%s.pyc"
                                      % (n[:-3], sys.implementation.cache_tag)))


def prune_runs(keep_rid):
    prune_agent_cache()
    try:
        names = [n for n in os.listdir(paths.RUNS) if os.path.isdir(os.path.join(paths.RUNS, n))]
    except FileNotFoundError:
        return
    names.sort(key=lambda n: os.stat(os.path.join(paths.RUNS, n)).st_mtime, reverse=True)
    for n in names[KEEP_RUNS:]:
        if n != keep_rid:
            remove_quiet(os.path.join(paths.RUNS, n))


def load_staged(rid):
    try:
        return read_json(os.path.join(run_dir(rid), "staged.json"))
    except ValueError:
        return None


def op_history(req):
    """The last N runs recorded on this host, oldest first: one record per run, its final
    result (a run that committed and was then rolled back, or whose firewall fell back,
    appends a second line; `earlier` keeps the results it replaced)."""
    n = max(1, min(1000, int(req.get("last", 20))))
    try:
        with open(paths.HISTORY, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 512 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    return {"ok": True, "records": one_per_run(lines)[-n:]}


def one_per_run(lines):
    """History lines to records, the lines of one run (same run_id) folded into its
    last, at the place of that last line."""
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    last = {}
    for i, rec in enumerate(records):
        rid = rec.get("run_id")
        if isinstance(rid, str):
            last[rid] = i
    out, earlier = [], {}
    for i, rec in enumerate(records):
        rid = rec.get("run_id")
        if isinstance(rid, str) and last[rid] != i:
            earlier.setdefault(rid, []).append(rec.get("result"))
            continue
        if isinstance(rid, str) and rid in earlier:
            rec = dict(rec, earlier=earlier.pop(rid))
        out.append(rec)
    return out
