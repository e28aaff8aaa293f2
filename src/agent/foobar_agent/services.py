"""The host's services: the init system, whether a service runs (its pid file, else its
init system), the actions reload/restart/start/stop, and the service's error log."""

import os

from . import paths
from .boot import enable_service
from .files import remove_quiet
from .haproxy import HAPROXY_STATE, save_haproxy_state
from .proc import quiet, run


PIDFILES = {
    "foobar-app": "/run/foobar-app.pid",
    "nginx": "/run/nginx.pid",
    "haproxy": "/run/haproxy.pid",
    "mariadb": "/run/mysqld/mysqld.pid",
    "mysql": "/run/mysqld/mysqld.pid",
    "keepalived": "/run/keepalived.pid",
    "prometheus": "/run/prometheus/prometheus.pid",
    "prometheus-node-exporter": "/run/prometheus/prometheus-node-exporter.pid",
    "prometheus-nginx-exporter": "/run/prometheus/prometheus-nginx-exporter.pid",
    "prometheus-mysqld-exporter": "/run/prometheus/prometheus-mysqld-exporter.pid",
    "prometheus-blackbox-exporter": "/run/prometheus/prometheus-blackbox-exporter.pid",
}
ERROR_LOGS = {
    "nginx": ("/var/log/nginx/error.log", 5),
    "mariadb": ("/var/log/mysql/error.log", 10),
    "mysql": ("/var/log/mysql/error.log", 10),
}


def init_system():
    return "systemd" if os.path.isdir(paths.SYSTEMD_RUN) else "sysv"


def service_running(name, init):
    if init == "systemd":
        return quiet(["systemctl", "is-active", "--quiet", name]) == 0
    # A live process behind the service's pidfile answers without running its init
    # script (tens of milliseconds each); otherwise ask the script.
    if service_pid(name):
        return True
    return quiet(["service", name, "status"]) == 0


def service_pid(name):
    pf = PIDFILES.get(name)
    if not pf:
        return None
    try:
        with open(pf) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)  # a hard kill leaves stale pid files behind
        return pid
    except (OSError, ValueError, IndexError):
        return None


def service_action(name, action, init):
    """Run reload/restart/start; returns (code, output, action actually run).
    A reload of a stopped service would fail: it becomes a start."""
    if action == "reload" and not service_running(name, init):
        action = "start"
    if name == "haproxy" and action in ("reload", "restart"):
        save_haproxy_state()  # release.py: the new processes keep drains and checks
    elif name == "haproxy" and action == "start":
        remove_quiet(HAPROXY_STATE)  # a stopped HAProxy's last state is stale by now
    argv = ["systemctl", action, name] if init == "systemd" else ["service", name, action]
    code, out = run(argv, timeout=300, detach=True)
    if code == 0 and action in ("start", "restart"):
        enable_service(name, init)
    return code, out, action


def log_tail(name):
    path, n = ERROR_LOGS.get(name, (None, 0))
    if not path or not os.path.isfile(path):
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return ""
    return ("\n--- last lines of %s ---\n%s" % (path, "\n".join(lines))) if lines else ""

