"""Validation of staged files, by the service's own validator (its argv from the
service table the tool sends: nginx -t on a copy of the tree, haproxy -c, mariadbd
--help, ...), against the staged versions of every file of the run; how each kind's
output is read is this module's."""

import os

from .core import AgentError, headline, re, safe_path, tail
from .files import copy_file, remove_quiet
from .proc import run, run_split
from .services import validated_by, validator_argv


def validate_one(v, rid, staged, record, save):
    kind = v.get("kind")
    service = validated_by(kind)  # the service table's: its validator's argv
    if kind == "nginx":
        root = safe_path(v.get("root", "/etc/nginx"), "validate.root")
        conf = safe_path(v.get("conf", root + "/nginx.conf"), "validate.conf")
        files = [safe_path(p, "validate.files") for p in v.get("files") or []]
        if conf not in files:
            files.append(conf)
        files = [p for p in files if p not in record.get("deletes", [])]
        for p in files:
            if not p.startswith(root + "/"):
                raise AgentError("request", "%s is not under the nginx root %s" % (p, root), path=p)
        stage = os.path.join(root, ".foobar-stage-%s" % rid)
        record["stage_dirs"].append(stage)
        save()
        try:
            remove_quiet(stage)
            os.mkdir(stage, 0o700)
            for p in files:
                src = staged.get(p, p)
                if not os.path.exists(src):
                    continue  # a listed file that is neither staged nor live: nginx reports it if needed
                dst = os.path.join(stage, os.path.relpath(p, root))
                os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
                copy_file(src, dst, os.stat(src))
            code, out = run(validator_argv(service, os.path.join(stage, os.path.relpath(conf, root))), timeout=60)
        finally:
            remove_quiet(stage)
        out = out.replace(stage + "/", root + "/").replace(stage, root)
        ok, target = code == 0, conf
    elif kind in ("haproxy", "mariadb", "mysql8", "nft", "keepalived", "prometheus", "blackbox"):
        target = safe_path(v.get("path"), "validate.path")
        f = staged.get(target, target)
        if not os.path.exists(f):
            raise AgentError("validation", "%s: nothing to validate, %s does not exist" % (kind, target),
                             path=target, service=service)
        if kind == "mariadb":
            code, _stdout, err = run_split(validator_argv(service, f), timeout=60)
            bad = [l for l in err.splitlines() if "[ERROR]" in l or "adjusted" in l]
            ok, out = code == 0 and not bad, err
            if code == 0 and bad:
                out = "\n".join(bad)
        elif kind in ("haproxy", "keepalived", "prometheus"):
            # The config may name files staged in this run (a certificate): check a copy
            # that points at the staged versions, since the live ones do not exist yet.
            with open(f) as fh:
                text = fh.read()
            copy = None
            for p, sp in staged.items():
                if p != target and p in text:
                    text = text.replace(p, sp)
                    copy = f + ".check"
            if copy:
                with open(copy, "w") as fh:
                    fh.write(text)
                os.chmod(copy, 0o600)
            try:
                code, out = run(validator_argv(service, copy or f), timeout=60)
            finally:
                if copy:
                    remove_quiet(copy)
            if copy:
                out = out.replace(copy, target)
            ok = code == 0
            out = "\n".join(l for l in out.splitlines()
                            if not l.startswith("[NOTICE]") and l.strip() != "Configuration file is valid")
        else:
            code, out = run(validator_argv(service, f), timeout=60)
            ok = code == 0
            if kind == "haproxy":
                out = "\n".join(l for l in out.splitlines()
                                if not l.startswith("[NOTICE]") and l.strip() != "Configuration file is valid")
    else:
        raise AgentError("request", "unknown validate kind %r" % (kind,))
    for p, s in staged.items():
        out = out.replace(s, p)
    if not ok:
        line = headline(out) or "exit status %s" % code
        if kind == "nginx":  # name the file nginx complains about when it is one of ours
            m = re.search(r" in (/\S+?):\d+", line)
            if m and m.group(1) in files:
                target = m.group(1)
        raise AgentError("validation", "%s rejected %s: %s" % (kind, target, line),
                         path=target, service=service, output=tail(out.strip()))
    return {"kind": kind, "path": target}

