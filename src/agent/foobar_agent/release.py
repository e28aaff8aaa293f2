"""The application's releases under ROOT/releases/ID and the ROOT/current symlink
(swapped with an atomic rename), the local health check after a switch, the system
users the services run as, and the expiry of certificates for observe. The load
balancer's runtime API (drain a server before its application restarts, put it back
once it answers) is haproxy.py's."""

import json
import os
import pwd
import time

from .core import AgentError, _Lazy, b64decode, chars_ok, now, safe_name, safe_path, shutil, tail, tempfile
from .files import fsync_dir, remove_quiet
from .proc import capture, run
from .services import init_system, service_action


io = _Lazy("io")
tarfile = _Lazy("tarfile")

RELEASE_ID_CHARS = frozenset("0123456789abcdef")  # [0-9a-f]{8,64}


def release_id_ok(v):
    return chars_ok(v, RELEASE_ID_CHARS, 64) and len(v) >= 8


def user_exists(name):
    safe_name(name, "user")
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def ensure_users(names):
    """System users (no home, no login) the services run as, created when missing."""
    for name in names:
        if not user_exists(name):
            code, out = run(["useradd", "--system", "--user-group", "--no-create-home",
                             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])
            if code != 0:
                raise AgentError("install", "creating user %s failed: %s" % (name, tail(out, 1000)))


def release_id(v):
    if not release_id_ok(v):
        raise AgentError("request", "invalid release id %r" % v)
    return v


def release_observe(spec):
    root = safe_path(spec.get("root"), "release root")
    current = None
    link = os.path.join(root, "current")
    if os.path.islink(link):
        current = os.path.basename(os.readlink(link).rstrip("/"))
    rel = os.path.join(root, "releases")
    releases = []
    if os.path.isdir(rel):
        entries = [e for e in os.listdir(rel) if release_id_ok(e)
                   and os.path.exists(os.path.join(rel, e, ".foobar-release"))]
        # In the order they were last served (or uploaded, if never served): a switch
        # touches the release it serves, so `rollback` goes back to the release served
        # before the current one, not to the one uploaded before it.
        releases = sorted(entries, key=lambda e: os.path.getmtime(os.path.join(rel, e)))
    return {"current": current, "releases": releases}


def op_release_upload(req):
    """Unpack a release (a tar, base64 in the request) into ROOT/releases/ID, unless it is
    already there. Written beside, then renamed: a half-written release never has its ID."""
    root = safe_path(req.get("root"), "release root")
    rid = release_id(req.get("id"))
    rel = os.path.join(root, "releases")
    final = os.path.join(rel, rid)
    if os.path.exists(os.path.join(final, ".foobar-release")):
        return {"ok": True, "already": True}
    os.makedirs(rel, mode=0o755, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".upload-", dir=rel)
    try:
        data = b64decode(req.get("tar_b64") or "")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for m in tar.getmembers():
                name = m.name
                if name.startswith("/") or ".." in name.split("/") or not (m.isfile() or m.isdir()):
                    raise AgentError("request", "unsafe entry in release archive: %r" % name)
            for m in tar.getmembers():
                target = os.path.join(tmp, m.name)
                if m.isdir():
                    os.makedirs(target, mode=0o755, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)
        with open(os.path.join(tmp, ".foobar-release"), "w") as f:
            f.write(json.dumps({"id": rid, "uploaded": now()}) + "\n")
        os.chmod(tmp, 0o755)
        if os.path.exists(final):
            shutil.rmtree(final)  # an incomplete earlier upload (no marker)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"ok": True, "already": False}


def swap_current(root, rid):
    link = os.path.join(root, "current")
    tmp = os.path.join(root, ".current-%d" % os.getpid())
    remove_quiet(tmp)
    os.symlink(os.path.join("releases", rid), tmp)
    os.replace(tmp, link)
    fsync_dir(root)


def http_health(check):
    """GET check["path"] on 127.0.0.1:PORT with the site's Host; None when it answers
    200 (and mentions check["expect"] if given), else what was seen."""
    import http.client
    deadline = now() + float(check.get("timeout_s", 30))
    last = ""
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(check.get("port", 80)), timeout=3)
            c.request("GET", check.get("path", "/health"), headers={"Host": check.get("host", "localhost")})
            r = c.getresponse()
            body = r.read(4096).decode("utf-8", "replace")
            c.close()
            if r.status == 200 and (not check.get("expect") or check["expect"] in body):
                return None
            last = "HTTP %s: %s" % (r.status, body.strip()[:200])
        except (OSError, ValueError) as e:
            last = str(e)
        if now() >= deadline:
            return "health check %s did not pass within %ss: %s" % (check.get("path"), check.get("timeout_s", 30), last)
        time.sleep(0.3)


def op_release_switch(req):
    """Point ROOT/current at release ID, restart the application server, and wait until
    the site's health check answers with the new release; on failure switch back."""
    root = safe_path(req.get("root"), "release root")
    rid = release_id(req.get("id"))
    service = safe_name(req.get("service"), "service")
    keep = max(1, int(req.get("keep", 5)))
    if not os.path.exists(os.path.join(root, "releases", rid, ".foobar-release")):
        raise AgentError("request", "release %s is not uploaded on this host" % rid)
    previous = release_observe({"root": root})["current"]
    init = init_system()
    swap_current(root, rid)
    code, out, _ = service_action(service, "restart", init)
    problem = None if code == 0 else "%s restart exited %s: %s" % (service, code, tail(out, 2000))
    if problem is None:
        problem = http_health(dict(req.get("check") or {}, expect=rid))
    if problem:
        if previous and previous != rid:
            swap_current(root, previous)
            service_action(service, "restart", init)
        raise AgentError("service", "release %s failed on this host (switched back to %s): %s"
                         % (rid, previous or "nothing", problem), service=service)
    # Served last: the newest in release_observe's order (what `rollback` goes back from).
    rel = os.path.join(root, "releases")
    os.utime(os.path.join(rel, rid))
    # Keep the newest `keep` releases, and always the current and previous ones.
    all_rel = release_observe({"root": root})["releases"]
    protected = {rid, previous}
    pruned = []
    for old in all_rel[:-keep] if len(all_rel) > keep else []:
        if old not in protected:
            shutil.rmtree(os.path.join(rel, old), ignore_errors=True)
            pruned.append(old)
    return {"ok": True, "previous": previous, "current": rid, "pruned": pruned}


def cert_not_after(path):
    """Unix time a PEM certificate expires (None if unreadable)."""
    code, out, _ = capture(["openssl", "x509", "-noout", "-enddate", "-in", path], timeout=10)
    if code != 0 or "=" not in out:
        return None
    import calendar
    try:
        return calendar.timegm(time.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))
    except ValueError:
        return None
