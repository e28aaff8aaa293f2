"""The job of `foobar-infra apply` as a pyinfra deploy, for bench/run.

    bench/.venv/bin/pyinfra -y lab/.state-bench/pyinfra_inventory.py bench/pyinfra/deploy.py [--dry]

Renders the same files (templates/*.j2 are foobar-infra's templates with Jinja2's
`join(" ")` for Tera's `join(sep=" ")`; the context is built here the way
foobar-infra's src/render.rs builds it), validates them with the services' own
checkers, reloads nginx and HAProxy when their files changed and restarts MariaDB when
its .cnf changed, one host at a time. The lab has no systemd: Debian init scripts, hence
sysvinit.service. bench/verify-identical checks that the files are byte-identical to
what foobar-infra and Ansible write.
"""

import ipaddress
import os

from pyinfra import host, inventory
from pyinfra.operations import files, server, sysvinit

HERE = os.path.dirname(os.path.abspath(__file__))

# foobar-infra's defaults (README, "The inventory"); per-lab values come from the
# inventory bench/lab writes.
DOMAIN = "www.foobar.com"
ALIASES = []
APP_PORT = 8000
APP_ROOT = "/srv/foobar"
HEALTH = {"path": "/health", "interval": "2s", "rise": 2, "fall": 3}
MARIADB_CNF = "/etc/mysql/mariadb.conf.d/60-foobar.cnf"
FILE = {"user": "root", "group": "root", "mode": "644"}


def tpl(name):
    return os.path.join(HERE, "templates", name)


def in_group(name):
    return name in host.groups


web_hosts = inventory.get_group("web")

common = {"domain": DOMAIN, "server_names": [DOMAIN] + ALIASES}

if in_group("db_primary") or in_group("db_replica"):
    primary = inventory.get_group("db_primary")[0]
    db = {
        "flavor": "mariadb",
        "server_id": host.data.server_id,
        "bind_address": host.data.ssh_hostname,
        "port": 3306,
        "primary": primary.name,
        "log_bin": "mysql-bin",
        "relay_log": "relay-bin",
        "innodb_buffer_pool_size": "256M",
    }
    cnf = files.template(
        name="MariaDB config",
        src=tpl("mysql-primary.cnf.j2" if in_group("db_primary") else "mysql-replica.cnf.j2"),
        dest=MARIADB_CNF,
        db=db,
        **common,
        **FILE,
    )
    server.shell(
        name="Validate the MariaDB config",
        commands=[f"mariadbd --defaults-file={MARIADB_CNF} --help --verbose >/dev/null"],
        _if=cnf.did_change,
    )
    sysvinit.service(
        name="Restart MariaDB (one host at a time)",
        service="mariadb",
        running=True,
        restarted=True,
        _if=cnf.did_change,
        _serial=True,
    )

if in_group("web"):
    web = {
        "app": False,  # the application server behind nginx: not in the bench job
        "app_port": APP_PORT,
        "app_root": APP_ROOT,
        "public_root": f"{APP_ROOT}/current/public",
        "health_path": HEALTH["path"],
        "client_max_body_size": host.data.client_max_body_size,
        "worker_connections": 1024,
    }
    conf = files.template(
        name="nginx.conf",
        src=tpl("nginx.conf.j2"),
        dest="/etc/nginx/nginx.conf",
        web=web,
        **common,
        **FILE,
    )
    site = files.template(
        name="nginx site",
        src=tpl("nginx-site.conf.j2"),
        dest=f"/etc/nginx/sites-foobar/{DOMAIN}.conf",
        web=web,
        **common,
        **FILE,
    )
    changed = [conf.did_change, site.did_change]
    nginx_changed = lambda: any(c() for c in changed)  # noqa: E731
    server.shell(name="nginx -t", commands=["nginx -t -q"], _if=nginx_changed)
    sysvinit.service(
        name="Reload nginx", service="nginx", running=True, reloaded=True, _if=nginx_changed
    )

if in_group("lb"):
    lb = {
        "bind": "*",
        "tls": None,  # HTTPS at the load balancer: not in the bench job
        "balance": "roundrobin",
        "mode": "active-active",
        "maxconn": 4096,
        "stats_port": 8404,
        "health_check": HEALTH,
        "timeouts": {"connect": "5s", "client": "30s", "server": "30s"},
        "backends": [
            {
                "name": w.name,
                "address": str(ipaddress.ip_address(w.data.ssh_hostname)),
                "port": 80,
                "backup": False,
            }
            for w in web_hosts
        ],
    }
    cfg = files.template(
        name="haproxy.cfg",
        src=tpl("haproxy.cfg.j2"),
        dest="/etc/haproxy/haproxy.cfg",
        lb=lb,
        **common,
        **FILE,
    )
    server.shell(
        name="haproxy -c", commands=["haproxy -c -q -f /etc/haproxy/haproxy.cfg"], _if=cfg.did_change
    )
    sysvinit.service(
        name="Reload HAProxy", service="haproxy", running=True, reloaded=True, _if=cfg.did_change
    )
