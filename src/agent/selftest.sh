#!/usr/bin/env bash
# Exercise the agent (src/agent/agent.py + db.py + run.py) for real inside a throwaway lab container.
#
#   src/agent/selftest.sh CONTAINER
#
# CONTAINER runs foobar-infra-lab:bookworm with LAB_SERVICES="nginx haproxy mariadb".
# The test CHANGES the container (nginx.conf, haproxy.cfg, a MariaDB .cnf, the agent's
# state dir): never point it at a container you care about. Every request goes through
# `docker exec -i CONTAINER python3 -c "$(cat agent.py)"`, as the tool runs it over ssh.
# Prints PASS/FAIL per case; exits 1 if any case failed.
set -euo pipefail
container=${1:?usage: selftest.sh CONTAINER}
here=$(cd "$(dirname "$0")" && pwd)
exec python3 - "$container" "$here" <<'PY'
import base64, hashlib, json, subprocess, sys, time

# The agent as the tool embeds it: agent.py, db.py, then run.py (src/remote/agent.rs).
C = sys.argv[1]
AGENT = "".join(open("%s/%s" % (sys.argv[2], f)).read() for f in ("agent.py", "boot.py", "db.py", "release.py", "run.py"))
failures, passes = [], 0


def sh(cmd, check=False):
    p = subprocess.run(["docker", "exec", C, "sh", "-c", cmd], capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError("%s: %s" % (cmd, p.stderr))
    return p.returncode, p.stdout


def agent(req):
    p = subprocess.run(["docker", "exec", "-i", C, "python3", "-c", AGENT],
                       input=json.dumps(req), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("agent exited %s: %s" % (p.returncode, p.stderr))
    if p.stderr.strip():
        raise RuntimeError("agent wrote to stderr: %s" % p.stderr)
    return json.loads(p.stdout)


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def live_sha(path):
    code, out = sh("sha256sum %s 2>/dev/null | cut -d' ' -f1" % path)
    return out.strip() or None


def b64(text):
    return base64.b64encode(text.encode()).decode()


def case(name):
    def wrap(fn):
        global passes
        try:
            fn()
            print("PASS", name)
            passes += 1
        except Exception as e:  # noqa: a test harness reports everything
            print("FAIL", name, "--", repr(e))
            failures.append(name)
        return fn
    return wrap


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def err_of(ans, kind):
    expect(not ans["ok"], "expected an error %s, got %s" % (kind, json.dumps(ans)[:400]))
    expect(ans["error"]["kind"] == kind, "expected kind %s, got %s" % (kind, json.dumps(ans["error"])[:600]))
    return ans["error"]


def ok(ans):
    expect(ans.get("ok") is True, "expected ok, got %s" % json.dumps(ans)[:800])
    return ans


def no_leftovers(rid):
    code, out = sh("find / -xdev \\( -name '*.foobar-new-%s' -o -name '.foobar-stage-%s' \\) 2>/dev/null; "
                   "ls -d /var/lib/foobar-infra/runs/%s 2>/dev/null" % (rid, rid, rid))
    expect(out.strip() == "", "left behind: %s" % out.strip())


def lock_free():
    expect(ok(agent({"op": "observe"}))["lock"] is None, "lock still held")


def last_history():
    return ok(agent({"op": "observe"}))["last_history"]


RUN = 0


def rid(tag):
    global RUN
    RUN += 1
    return "t%d-%s-%d" % (int(time.time()), tag, RUN)


def lock(r):
    return {"owner": "selftest@dev", "pid": 4242, "started": time.time(), "tool_version": "0.0.0-test"}


def stage(r, files, expect_=None, validate=(), **extra):
    req = {"op": "stage", "run_id": r, "lock": lock(r), "stale_after_s": 600, "expect": expect_ or {},
           "install": [], "files": files, "deletes": [], "validate": list(validate),
           "history": {"run_id": r, "user": "selftest"}}
    req.update(extra)
    return agent(req)


def commit(r, actions, manifest=None, **extra):
    req = {"op": "commit", "run_id": r, "actions": actions, "history": {"run_id": r, "user": "selftest"}}
    if manifest is not None:
        req["manifest"] = manifest
    req.update(extra)
    return agent(req)


NGINX_CONF = """user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    include sites-foobar/*.conf;
}
"""
SITE = "/etc/nginx/sites-foobar/www.foobar.com.conf"
SITE_OK = """server {
    listen 80 default_server;
    server_name www.foobar.com;
    location / { return 200 "foobar-%s\\n"; }
}
"""
NGINX_VALIDATE = {"kind": "nginx", "root": "/etc/nginx", "conf": "/etc/nginx/nginx.conf",
                  "files": ["/etc/nginx/nginx.conf", SITE]}
HAPROXY = "/etc/haproxy/haproxy.cfg"
HAPROXY_OK = """global
    daemon
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:8080
    http-request return status 200 content-type text/plain string "haproxy-%s"
"""
CNF = "/etc/mysql/mariadb.conf.d/60-foobar.cnf"
NGINX_ACTION = {"service": "nginx", "action": "reload", "check": {"tcp": "127.0.0.1:80", "timeout_s": 10}}


def http(port=80):
    code, out = sh("python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:%d/').read().decode())\"" % port)
    return out.strip()


def file_entry(path, content, mode="0644", service="nginx"):
    return {"path": path, "content_b64": b64(content), "mode": mode, "owner": "root", "group": "root",
            "service": service}


# ---------------------------------------------------------------- setup
sh("rm -rf /var/lib/foobar-infra /etc/nginx/sites-foobar " + CNF, check=True)
if sh("test -d /var/lib/mysql/mysql")[0] != 0:  # lab image without MariaDB system tables
    print("note: initialising /var/lib/mysql (mariadb-install-db) in", C)
    sh("mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1", check=True)
if sh("service mariadb status >/dev/null 2>&1")[0] != 0:
    sh("service mariadb start >/dev/null 2>&1", check=True)
ORIG_NGINX_SHA = live_sha("/etc/nginx/nginx.conf")


@case("observe: fresh host")
def _():
    a = ok(agent({"op": "observe", "paths": {"/etc/nginx/nginx.conf": None, SITE: None},
                  "services": ["nginx", "haproxy", "mariadb", "nosuch"],
                  "packages": ["nginx", "haproxy", "mariadb-server", "no-such-package-x"], "max_content": 1 << 20}))
    expect(a["init"] == "sysv", "init %s" % a["init"])
    expect(a["hostname"], "hostname")
    expect(a["lock"] is None and a["manifest"] == [] and a["last_history"] is None, "state not fresh")
    f = a["files"]["/etc/nginx/nginx.conf"]
    expect(f["exists"] and f["mode"] == "0644" and f["owner"] == "root" and f["group"] == "root", str(f))
    expect(f["sha256"] == ORIG_NGINX_SHA and "content_b64" in f, "content of a file with unknown desired sha")
    expect(a["files"][SITE] == {"exists": False}, str(a["files"][SITE]))
    expect(a["packages"] == {"nginx": True, "haproxy": True, "mariadb-server": True, "no-such-package-x": False},
           str(a["packages"]))
    s = a["services"]
    expect(s["nginx"]["running"] and isinstance(s["nginx"]["pid"], int), str(s))
    expect(s["mariadb"]["running"] and isinstance(s["mariadb"]["pid"], int), str(s))
    expect(s["nosuch"] == {"running": False, "pid": None}, str(s))


@case("observe: drift, symlink, content only when different")
def _():
    sh("mkdir -p /tmp/obs && printf 'hello\\n' > /tmp/obs/a && ln -sf /tmp/obs/a /tmp/obs/link", check=True)
    a = ok(agent({"op": "observe", "paths": {"/tmp/obs/a": sha("hello\n"), "/tmp/obs/link": sha("other\n")},
                  "max_content": 100}))
    fa, fl = a["files"]["/tmp/obs/a"], a["files"]["/tmp/obs/link"]
    expect("content_b64" not in fa and fa["sha256"] == sha("hello\n") and fa["size"] == 6, str(fa))
    expect(fl["link"] == "/tmp/obs/a" and fl["sha256"] == sha("hello\n"), str(fl))
    expect(base64.b64decode(fl["content_b64"]) == b"hello\n", "drifted content not returned")
    a = ok(agent({"op": "observe", "paths": {"/tmp/obs/a": None}, "max_content": 3}))
    expect(a["files"]["/tmp/obs/a"].get("content_too_large") is True, str(a["files"]["/tmp/obs/a"]))


@case("request: unsafe paths refused")
def _():
    for p in ("etc/x", "/etc/../x", "/etc/./x", "/var/lib/foobar-infra/lock.json"):
        err_of(agent({"op": "observe", "paths": {p: None}}), "request")
    err_of(stage(rid("bad"), [file_entry("/etc/nginx/../x", "x")]), "request")
    err_of(agent({"op": "nope"}), "request")
    p = subprocess.run(["docker", "exec", "-i", C, "python3", "-c", AGENT], input="{not json", capture_output=True,
                       text=True)
    expect(p.returncode == 0 and json.loads(p.stdout)["error"]["kind"] == "request", p.stdout + p.stderr)
    lock_free()


@case("stage+commit: nginx.conf and site")
def _():
    r = rid("nginx")
    a = ok(stage(r, [file_entry("/etc/nginx/nginx.conf", NGINX_CONF), file_entry(SITE, SITE_OK % "v1")],
                 expect_={"/etc/nginx/nginx.conf": ORIG_NGINX_SHA, SITE: None}, validate=[NGINX_VALIDATE],
                 install=["nginx"]))
    expect(len(a["staged"]) == 2, str(a))
    expect(live_sha(SITE + ".foobar-new-" + r) == sha(SITE_OK % "v1"), "staged file missing")
    expect(ok(agent({"op": "observe"}))["lock"]["run_id"] == r, "lock not held after stage")
    manifest = [{"path": "/etc/nginx/nginx.conf", "sha256": sha(NGINX_CONF), "mode": "0644", "owner": "root",
                 "group": "root", "service": "nginx"},
                {"path": SITE, "sha256": sha(SITE_OK % "v1"), "mode": "0644", "owner": "root", "group": "root",
                 "service": "nginx"}]
    c = ok(commit(r, [NGINX_ACTION], manifest))
    expect(c["actions"][0]["service"] == "nginx" and c["actions"][0]["action"] == "reload", str(c))
    time.sleep(0.5)
    expect(http() == "foobar-v1", "nginx answers %r" % http())
    expect(live_sha("/etc/nginx/nginx.conf") == sha(NGINX_CONF), "nginx.conf not installed")
    o = ok(agent({"op": "observe"}))
    expect(o["lock"] is None, "lock held after commit")
    expect([m["path"] for m in o["manifest"]] == ["/etc/nginx/nginx.conf", SITE], str(o["manifest"]))
    expect(o["files"][SITE]["sha256"] == sha(SITE_OK % "v1"), "manifest paths not observed")
    expect(o["last_history"]["result"] == "applied" and o["last_history"]["run_id"] == r, str(o["last_history"]))
    expect(sh("stat -c %a /var/lib/foobar-infra /var/lib/foobar-infra/manifest.json")[1].split() == ["700", "600"],
           "state dir modes")
    expect(sh("test -f /var/lib/foobar-infra/runs/%s/backup/etc/nginx/nginx.conf" % r)[0] == 0, "no backup")


@case("stage: invalid nginx site -> validation with the real path, nothing left")
def _():
    r = rid("badsite")
    bad = "server {\n    listen 80 default_server;\n    bogus_directive on;\n}\n"
    e = err_of(stage(r, [file_entry(SITE, bad), file_entry("/etc/nginx/sites-foobar/new/extra.conf", "# x\n")],
                     expect_={SITE: sha(SITE_OK % "v1")}, validate=[NGINX_VALIDATE]), "validation")
    expect(e["path"] == SITE and e["service"] == "nginx", str(e))
    expect(e["message"].startswith("nginx rejected %s: [emerg] unknown directive" % SITE), e["message"])
    expect('unknown directive "bogus_directive" in %s:3' % SITE in e["output"], e["output"])
    expect("foobar-stage" not in e["output"] and "foobar-new" not in e["output"], e["output"])
    no_leftovers(r)
    expect(sh("test -e /etc/nginx/sites-foobar/new")[0] != 0, "created dir left behind")
    lock_free()
    h = last_history()
    expect(h["result"] == "failed" and h["run_id"] == r and "bogus_directive" in h["error"], str(h))
    expect(live_sha(SITE) == sha(SITE_OK % "v1"), "live site touched")


@case("stage+commit: haproxy valid, then invalid")
def _():
    r = rid("hap")
    ok(stage(r, [file_entry(HAPROXY, HAPROXY_OK % "v1", service="haproxy")], validate=[{"kind": "haproxy", "path": HAPROXY}]))
    ok(commit(r, [{"service": "haproxy", "action": "reload", "check": {"tcp": "127.0.0.1:8080", "timeout_s": 10}}]))
    expect(http(8080) == "haproxy-v1", "haproxy answers %r" % http(8080))
    r = rid("hapbad")
    e = err_of(stage(r, [file_entry(HAPROXY, HAPROXY_OK.replace("maxconn 256", "maxconn 256\n    no-such-kw 1") % "v2",
                                    service="haproxy")], validate=[{"kind": "haproxy", "path": HAPROXY}]), "validation")
    expect(e["path"] == HAPROXY and e["service"] == "haproxy", str(e))
    expect(HAPROXY + ":4" in e["output"] and "foobar-new" not in e["output"], e["output"])
    expect("unknown keyword 'no-such-kw'" in e["message"], e["message"])
    no_leftovers(r)
    lock_free()


@case("stage+commit: mariadb cnf valid (restart + ping check)")
def _():
    r = rid("cnf")
    ok(stage(r, [file_entry(CNF, "[mysqld]\nmax_connections = 200\n", service="mariadb")], expect_={CNF: None},
             validate=[{"kind": "mariadb", "path": CNF}]))
    c = ok(commit(r, [{"service": "mariadb", "action": "restart",
                       "check": {"command": ["mariadb-admin", "ping", "--silent"], "timeout_s": 60}}]))
    expect(c["actions"][0]["action"] == "restart", str(c))
    code, out = sh("mariadb -N -e 'select @@max_connections'")
    expect(out.strip() == "200", "max_connections %r" % out)


@case("stage: mariadb unknown variable and out-of-range value -> validation")
def _():
    for text, needle in (("[mysqld]\nno_such_variable = 1\n", "unknown variable 'no_such_variable=1'"),
                         ("[mysqld]\nmax_connections = 999999999\n", "adjusted")):
        r = rid("cnfbad")
        e = err_of(stage(r, [file_entry(CNF, text, service="mariadb")], validate=[{"kind": "mariadb", "path": CNF}]),
                   "validation")
        expect(e["path"] == CNF and e["service"] == "mariadb" and needle in e["output"], str(e))
        expect(needle in e["message"], e["message"])
        no_leftovers(r)
    lock_free()


@case("locked: a second run is refused, abort releases, abort is idempotent")
def _():
    a, b = rid("holder"), rid("second")
    ok(stage(a, [file_entry("/tmp/obs/staged", "x\n")]))
    e = err_of(stage(b, [file_entry("/tmp/obs/other", "y\n")]), "locked")
    for part in ("selftest@dev", "4242", a, "T"):
        expect(part in e["message"], "%r not in %r" % (part, e["message"]))
    no_leftovers(b)
    expect(sh("test -e /tmp/obs/staged.foobar-new-" + a)[0] == 0, "holder's staged file removed")
    abort = ok(agent({"op": "abort", "run_id": b}))
    expect(not abort["released"], "abort of another run released the lock")
    ok(agent({"op": "abort", "run_id": a}))
    no_leftovers(a)
    lock_free()
    expect(ok(agent({"op": "abort", "run_id": a}))["released"] is False, "second abort")


@case("locked: a stale lock is replaced")
def _():
    a, b = rid("stale"), rid("fresh")
    req = {"op": "stage", "run_id": a, "lock": dict(lock(a), started=time.time() - 3600), "stale_after_s": 600}
    ok(agent(req))
    ok(stage(b, []))
    expect(ok(agent({"op": "observe"}))["lock"]["run_id"] == b, "stale lock not replaced")
    ok(agent({"op": "abort", "run_id": b}))
    ok(agent({"op": "abort", "run_id": a}))
    lock_free()


@case("conflict: live file differs from the expected hash")
def _():
    r = rid("conflict")
    e = err_of(stage(r, [file_entry(SITE, SITE_OK % "v9")], expect_={SITE: sha("something else")}), "conflict")
    expect(e["path"] == SITE and sha("something else") in e["message"] and sha(SITE_OK % "v1") in e["message"], str(e))
    e = err_of(stage(r, [], expect_={SITE: None}), "conflict")
    no_leftovers(r)
    lock_free()


@case("commit: failing check restores the backups")
def _():
    r = rid("badcheck")
    before_conf, before_site = live_sha("/etc/nginx/nginx.conf"), live_sha(SITE)
    new_site = "/etc/nginx/sites-foobar/added.conf"
    ok(stage(r, [file_entry(SITE, SITE_OK % "v2"), file_entry(new_site, "# nothing\n")], validate=[NGINX_VALIDATE]))
    e = err_of(commit(r, [{"service": "nginx", "action": "reload", "check": {"tcp": "127.0.0.1:9", "timeout_s": 1}}]),
               "service")
    expect(e["service"] == "nginx" and "127.0.0.1:9" in e["message"] and "restored" in e["message"], str(e))
    expect(live_sha(SITE) == before_site and live_sha("/etc/nginx/nginx.conf") == before_conf, "not restored")
    expect(sh("test -e " + new_site)[0] != 0, "new file not removed")
    time.sleep(0.5)
    expect(http() == "foobar-v1", "nginx answers %r after restore" % http())
    expect(last_history()["result"] == "failed", "history")
    lock_free()
    expect(ok(agent({"op": "rollback", "run_id": r, "actions": []})).get("already") == "restored", "rollback of failed")


@case("rollback: a committed run is undone")
def _():
    r = rid("rb")
    before = ok(agent({"op": "observe"}))["manifest"]
    ok(stage(r, [file_entry(SITE, SITE_OK % "v3")], validate=[NGINX_VALIDATE]))
    ok(commit(r, [NGINX_ACTION], manifest=[{"path": SITE, "sha256": sha(SITE_OK % "v3")}]))
    time.sleep(0.5)
    expect(http() == "foobar-v3", "v3 not live")
    a = ok(agent({"op": "rollback", "run_id": r, "actions": [NGINX_ACTION], "history": {"run_id": r}}))
    expect(a["restored"] == [SITE], str(a))
    time.sleep(0.5)
    expect(http() == "foobar-v1" and live_sha(SITE) == sha(SITE_OK % "v1"), "not rolled back")
    o = ok(agent({"op": "observe"}))
    expect(o["manifest"] == before, "manifest not restored")
    expect(o["last_history"]["result"] == "rolled-back" and o["lock"] is None, str(o["last_history"]))
    expect(ok(agent({"op": "rollback", "run_id": r, "actions": []})).get("already") == "rolled-back", "idempotent")


@case("reload of a stopped service starts it")
def _():
    sh("service nginx stop >/dev/null 2>&1")
    r = rid("start")
    ok(stage(r, [file_entry(SITE, SITE_OK % "v1")], validate=[NGINX_VALIDATE]))
    c = ok(commit(r, [NGINX_ACTION]))
    expect(c["actions"][0]["action"] == "start", str(c))
    expect(http() == "foobar-v1", "nginx not started")


@case("stage: keepalived valid, then invalid (validation only, abort)")
def _():
    k = "/etc/keepalived/keepalived.conf"
    good = "vrrp_instance VI_1 {\n state MASTER\n interface eth0\n virtual_router_id 51\n priority 100\n" \
           " virtual_ipaddress {\n  10.9.9.9/24\n }\n}\n"
    r = rid("ka")
    ok(stage(r, [file_entry(k, good, service="keepalived")], validate=[{"kind": "keepalived", "path": k}]))
    ok(agent({"op": "abort", "run_id": r}))
    no_leftovers(r)
    r = rid("kabad")
    e = err_of(stage(r, [file_entry(k, good.replace("state MASTER", "bogus_kw 1"), service="keepalived")],
                     validate=[{"kind": "keepalived", "path": k}]), "validation")
    expect(e["path"] == k and "(%s: Line 2) Unknown keyword 'bogus_kw'" % k in e["output"], str(e))
    no_leftovers(r)
    lock_free()


@case("stage: retried with the same run id, then commit with a delete; rollback restores it")
def _():
    gone = "/etc/nginx/sites-foobar/old.conf"
    sh("printf '# old site\\n' > %s && chmod 0640 %s" % (gone, gone), check=True)
    r = rid("del")
    files = [file_entry(SITE, SITE_OK % "v4")]
    ok(stage(r, files, validate=[NGINX_VALIDATE], deletes=[gone]))
    ok(stage(r, files, validate=[NGINX_VALIDATE], deletes=[gone]))  # same run again: fine, same lock
    ok(commit(r, [NGINX_ACTION]))
    expect(sh("test -e " + gone)[0] != 0, "deleted file still there")
    expect(http() == "foobar-v4", "v4 not live")
    ok(agent({"op": "rollback", "run_id": r, "actions": [NGINX_ACTION]}))
    expect(sh("stat -c %a:%U " + gone)[1].strip() == "640:root", "deleted file not restored with its mode")
    expect(http() == "foobar-v1", "not rolled back")
    sh("rm -f " + gone)


@case("commit: refused without the lock; rollback refused when the file changed since")
def _():
    r = rid("nolock")
    err_of(commit(r, [NGINX_ACTION]), "locked")
    r = rid("changed")
    ok(stage(r, [file_entry(SITE, SITE_OK % "v5")], validate=[NGINX_VALIDATE]))
    ok(commit(r, [NGINX_ACTION]))
    sh("echo '# edited by hand' >> " + SITE, check=True)
    e = err_of(agent({"op": "rollback", "run_id": r, "actions": [NGINX_ACTION]}), "conflict")
    expect(e["path"] == SITE, str(e))
    lock_free()
    ok(agent({"op": "rollback", "run_id": r, "actions": [NGINX_ACTION], "force": True}))
    expect(http() == "foobar-v1", "forced rollback")


@case("locked: two stages at once, exactly one wins")
def _():
    import threading
    runs, answers = [rid("race"), rid("race")], {}

    def go(r):
        answers[r] = stage(r, [file_entry("/tmp/obs/race", r)])
    threads = [threading.Thread(target=go, args=(r,)) for r in runs]
    [t.start() for t in threads]
    [t.join() for t in threads]
    kinds = sorted("ok" if a["ok"] else a["error"]["kind"] for a in answers.values())
    expect(kinds == ["locked", "ok"], str(answers))
    for r in runs:
        ok(agent({"op": "abort", "run_id": r}))
    lock_free()


@case("sudo -n as a non-root user; no sudo -> io error")
def _():
    p = subprocess.run(["docker", "exec", "-i", "-u", "deploy", C, "sudo", "-n", "python3", "-c", AGENT],
                       input='{"op": "observe", "services": ["nginx"]}', capture_output=True, text=True)
    expect(p.returncode == 0 and json.loads(p.stdout)["services"]["nginx"]["running"], p.stdout + p.stderr)
    p = subprocess.run(["docker", "exec", "-i", "-u", "deploy", C, "python3", "-c", AGENT],
                       input='{"op": "stage", "run_id": "x"}', capture_output=True, text=True)
    expect(p.returncode == 0 and json.loads(p.stdout)["error"]["kind"] == "io", p.stdout + p.stderr)


@case("state: history lines are JSON, old run dirs pruned to 10")
def _():
    code, out = sh("cat /var/lib/foobar-infra/history.jsonl")
    recs = [json.loads(l) for l in out.splitlines()]
    expect(len(recs) >= 10 and all(r["result"] in ("applied", "failed", "rolled-back") for r in recs), out[-500:])
    code, out = sh("ls /var/lib/foobar-infra/runs | wc -l")
    expect(int(out) <= 10, "%s run dirs" % out.strip())


print("%d passed, %d failed" % (passes, len(failures)))
sys.exit(1 if failures else 0)
PY
