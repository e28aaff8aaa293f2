"""observe: everything the tool reads of a host in one request (files, services, boot,
packages, lock, manifest, history, database, releases, load balancer, certificates,
listening ports). It never writes."""

import os

from . import paths
from .core import AgentError, name_ok, safe_name, safe_path
from .db import db_observe, replica_status
from .files import file_info, read_json
from .haproxy import haproxy_observe
from .packages import dpkg_installed
from .ports import listeners_observe
from .release import cert_not_after, release_observe, user_exists
from .services import init_system, observe_services, service_running, units_where
from .state import last_history, original_path


def op_observe(req):
    wanted = req.get("paths") or {}
    if not isinstance(wanted, dict):
        raise AgentError("request", "paths must be an object {PATH: SHA256|null}")
    for p in wanted:
        safe_path(p)
    services = [safe_name(s, "service") for s in req.get("services") or []]
    packages = [safe_name(p, "package") for p in req.get("packages") or []]
    max_content = int(req.get("max_content", 1 << 20))
    init = init_system()

    try:
        manifest = read_json(paths.MANIFEST, []) or []
    except ValueError:
        manifest = []
    try:
        lock = read_json(paths.LOCK)
    except ValueError:
        lock = {"unreadable": True}

    files = {}
    for p, desired in wanted.items():
        files[p] = file_info(p, desired, max_content, want_content=True)
    for entry in manifest:
        p = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(p, str) and p not in files:
            files[p] = file_info(p)

    # The services of files managed earlier too: a role taken off stops its service.
    for entry in manifest:
        svc = entry.get("service") if isinstance(entry, dict) else None
        if name_ok(svc) and svc not in services:
            services.append(svc)
    db = db_observe(req["db"]) if req.get("db") else None  # defined in db.py
    # A database host no longer planned as one: is it still a replica? (Only where the
    # tool managed a database config, and only while the server runs.)
    former_replica = None
    servers = units_where("database")  # the service table's database servers
    if db is None and any(isinstance(e, dict) and e.get("service") in servers for e in manifest) \
            and any(service_running(n, init) for n in servers):
        try:
            former_replica = replica_status()
        except AgentError:
            former_replica = None
    release = release_observe(req["release"]) if req.get("release") else None  # release.py
    users = {u: user_exists(u) for u in req.get("users") or []}  # release.py
    balancer = haproxy_observe() if req.get("haproxy") else None  # release.py
    certs = {safe_path(c, "certs"): cert_not_after(c) for c in req.get("certs") or []}  # release.py
    listeners = listeners_observe(req.get("ports") or [], init)  # ports.py
    # Managed paths whose file before the first apply is kept (put back on removal).
    originals = sorted(p for p in files if os.path.lexists(original_path(p)))
    return {
        "ok": True, "init": init, "hostname": os.uname().nodename, "files": files, "db": db, "release": release, "users": users, "haproxy": balancer, "certs": certs,
        "services": observe_services(services, init),
        "packages": dpkg_installed(packages), "lock": lock, "manifest": manifest,
        "last_history": last_history(), "former_replica": former_replica, "listeners": listeners,
        "originals": originals,
    }

