#!/usr/bin/env bash
# PID 1 of a Debian 12 (bookworm) foobar-infra lab container (installed as
# /usr/local/sbin/lab-entrypoint). There is no systemd in these containers: this script
# does the little an init must do for the lab, as a sysvinit boot would:
#   - first start only (marker /var/lib/foobar-lab/first-start-done): the image has every
#     installed service enabled by its package; `update-rc.d NAME disable` each stack
#     service not in $LAB_SERVICES (and enable those in it);
#   - every start: start each enabled stack or foobar-* service (an S??NAME link in
#     /etc/rc2.d), in link order, so that after a restart exactly the services enabled
#     at boot come back;
#   - run sshd in the foreground of `docker logs`, and stop the services cleanly
#     (MariaDB first) on `docker stop`/`docker restart`.
#
# Env:
#   LAB_AUTHORIZED_KEY  public key allowed to log in as root and as deploy
#   LAB_SERVICES        space-separated services this host runs, e.g. "nginx mariadb"
set -euo pipefail

log() { echo "lab-entrypoint: $*" >&2; }

# The stack's services (same list as lab/setup.sh). Only these and foobar-* are started
# from rc2.d: hwclock, procps and the like are not daemons (and ssh is this script's).
STACK=(nginx haproxy mariadb keepalived prometheus prometheus-node-exporter
       prometheus-mysqld-exporter prometheus-nginx-exporter prometheus-blackbox-exporter)
MARKER=/var/lib/foobar-lab/first-start-done
read -r -a wanted <<<"${LAB_SERVICES:-}"

in_list() {
    local x=$1; shift
    local y
    for y in "$@"; do [[ $x == "$y" ]] && return 0; done
    return 1
}

if [[ ! -e $MARKER ]]; then
    for s in "${STACK[@]}"; do
        [[ -x /etc/init.d/$s ]] || continue
        if in_list "$s" "${wanted[@]}"; then
            # `enable` needs links to modify; `defaults` adds them only when none exist.
            compgen -G "/etc/rc2.d/[SK][0-9][0-9]$s" >/dev/null || update-rc.d "$s" defaults
            update-rc.d "$s" enable
        else
            update-rc.d "$s" disable
            log "first start: disabled $s"
        fi
    done
    for s in "${wanted[@]}"; do
        in_list "$s" "${STACK[@]}" || [[ -x /etc/init.d/$s ]] || log "LAB_SERVICES names $s, which has no init script"
    done
    mkdir -p "${MARKER%/*}"
    touch "$MARKER"
fi

# Enabled services, in link order (the glob sorts S01... before S02...).
enabled_services() {
    local link name
    for link in /etc/rc2.d/S[0-9][0-9]*; do
        [[ -e $link ]] || continue
        name=${link##*/}
        name=${name:3}
        if in_list "$name" "${STACK[@]}" || [[ $name == foobar-* ]]; then
            echo "$name"
        fi
    done
}
mapfile -t services < <(enabled_services)

# A hard kill (or the image itself) can leave PID files behind; haproxy, nginx and
# keepalived then refuse to start or report a dead process as running.
rm -f /run/*.pid /run/*/*.pid

# /run may be a fresh tmpfs: recreate what Debian's boot scripts normally create.
mkdir -p /run/sshd /run/lock
chmod 1777 /run/lock

# Host keys are not in the image (they would be shared by every container): the
# first start of each container generates its own, later starts keep them.
if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -A
fi

# The key may change between `lab/up` runs, so it is rewritten on every start.
if [[ -n ${LAB_AUTHORIZED_KEY:-} ]]; then
    for home_user in /root:root /home/deploy:deploy; do
        home=${home_user%%:*} user=${home_user##*:}
        install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
        printf '%s\n' "$LAB_AUTHORIZED_KEY" >"$home/.ssh/authorized_keys"
        chown "$user:$user" "$home/.ssh/authorized_keys"
        chmod 0600 "$home/.ssh/authorized_keys"
    done
else
    log "LAB_AUTHORIZED_KEY is empty: nobody can log in"
fi

# There is no syslog daemon: MariaDB (mysqld_safe pipes to logger) and HAProxy would
# log into the void. A tiny relay prints each message to stderr, i.e. to `docker
# logs` next to sshd's lines. Debian's HAProxy runs chrooted in /var/lib/haproxy, so
# its /dev/log is /var/lib/haproxy/dev/log (Debian's rsyslog snippet does the same).
python3 -u -c '
import os, re, select, socket, sys
paths = ["/dev/log"]
if os.path.isdir("/var/lib/haproxy"):
    paths.append("/var/lib/haproxy/dev/log")
socks = []
for p in paths:
    os.makedirs(os.path.dirname(p), exist_ok=True)
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(p)
    os.chmod(p, 0o666)
    socks.append(s)
pri = re.compile(rb"^<[0-9]+>")
while True:
    for s in select.select(socks, [], [])[0]:
        msg = s.recv(65536)
        sys.stderr.buffer.write(b"syslog: " + pri.sub(b"", msg).rstrip(b"\n") + b"\n")
        sys.stderr.flush()
' &
syslog_pid=$!
# wait (bounded) for the sockets, so that the services' first messages are kept
for _ in $(seq 1 50); do
    [[ -S /dev/log && ( ! -d /var/lib/haproxy || -S /var/lib/haproxy/dev/log ) ]] && break
    sleep 0.05
done

sshd_pid=

# Stop MariaDB first (as a real shutdown would), then the rest in reverse link order,
# then sshd. MariaDB is stopped whenever it runs, even if the tool started it rather
# than this script: killed by the kernel it would run crash recovery on its next start.
# "The rest" is what this script started plus what was enabled since (the tool enables
# and starts keepalived, foobar-* units...), when it runs.
# shellcheck disable=SC2317 # run by the trap below
stop_all() {
    trap - TERM INT
    log "stopping"
    local s i now=() stop=()
    mapfile -t now < <(enabled_services)
    for s in "${services[@]}"; do stop+=("$s"); done
    for s in "${now[@]}"; do
        in_list "$s" "${stop[@]}" && continue
        service "$s" status >/dev/null 2>&1 && stop+=("$s")
    done
    if [[ -e /run/mysqld/mysqld.pid ]] || in_list mariadb "${stop[@]}"; then
        service mariadb stop || log "mariadb stop failed"
    fi
    for ((i = ${#stop[@]} - 1; i >= 0; i--)); do
        s=${stop[i]}
        [[ $s == mariadb ]] && continue
        service "$s" stop || log "$s stop failed"
    done
    if [[ -n $sshd_pid ]]; then
        kill "$sshd_pid" 2>/dev/null || true
        wait "$sshd_pid" 2>/dev/null || true
    fi
    # last, so that the services' shutdown messages reach `docker logs`
    kill "$syslog_pid" 2>/dev/null || true
    exit 0
}
trap stop_all TERM INT

for s in "${services[@]}"; do
    service "$s" start || log "$s failed to start"
done

# sshd in the background (not exec'd) so that this shell stays PID 1, keeps the
# trap and reaps orphans. -e: log to stderr, i.e. to `docker logs`.
/usr/sbin/sshd -D -e &
sshd_pid=$!
log "ready (services: ${services[*]:-none})"

# `wait` returns early when a trapped signal arrives; the trap then exits.
set +e
wait "$sshd_pid"
rc=$?
log "sshd exited with status $rc"
exit "$rc"
