#!/usr/bin/env bash
# Boot-time setup of a Debian 13 (trixie) lab container, where systemd is PID 1.
# Installed by lab/image as /usr/local/sbin/lab-setup and run on every boot by the
# oneshot lab-setup.service (lab/lab-setup.service), before sshd and before the stack's
# services; lab/up mounts the repository's copy over it.
#
# Every boot: generate missing ssh host keys, write the lab key for root and deploy.
# First boot only (marker /var/lib/foobar-lab/first-boot-done): in the image every
# installed service was enabled by its package, so disable (and cancel the start of)
# each stack service not in LAB_SERVICES, and make sure those in it are enabled.
# After that, boot is plain systemd: what is enabled starts.
#
# Env (of PID 1, i.e. `docker run -e`, read from /proc/1/environ: a unit does not
# inherit it):
#   LAB_AUTHORIZED_KEY  public key allowed to log in as root and as deploy
#   LAB_SERVICES        space-separated services this host runs, e.g. "nginx mariadb"
set -euo pipefail

log() { echo "lab-setup: $*" >&2; }

# The stack's services (same list as lab/entrypoint.sh): the ones a first boot turns
# off unless LAB_SERVICES names them.
STACK=(nginx haproxy mariadb keepalived prometheus prometheus-node-exporter
       prometheus-mysqld-exporter prometheus-nginx-exporter prometheus-blackbox-exporter)
MARKER=/var/lib/foobar-lab/first-boot-done

# Value of a variable in PID 1's environment ("" when absent).
pid1_env() {
    local entry
    while IFS= read -r -d '' entry || [[ -n $entry ]]; do
        if [[ $entry == "$1="* ]]; then
            printf '%s' "${entry#*=}"
            return 0
        fi
    done </proc/1/environ
}

key=$(pid1_env LAB_AUTHORIZED_KEY)
read -r -a wanted <<<"$(pid1_env LAB_SERVICES)"

# Host keys are not in the image (they would be shared by every container): the first
# boot generates this container's own, later boots keep them (-A only makes missing ones).
ssh-keygen -A

# The key may change between `lab/up` runs, so it is rewritten on every boot.
if [[ -n $key ]]; then
    for home_user in /root:root /home/deploy:deploy; do
        home=${home_user%%:*} user=${home_user##*:}
        install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
        printf '%s\n' "$key" >"$home/.ssh/authorized_keys"
        chown "$user:$user" "$home/.ssh/authorized_keys"
        chmod 0600 "$home/.ssh/authorized_keys"
    done
else
    log "LAB_AUTHORIZED_KEY is empty: nobody can log in"
fi

if [[ -e $MARKER ]]; then
    exit 0
fi

in_list() {
    local x=$1; shift
    local y
    for y in "$@"; do [[ $x == "$y" ]] && return 0; done
    return 1
}

# Service unit files and their state ("nginx.service enabled enabled"), in one call.
declare -A state=()
while read -r unit st _; do
    state[${unit%.service}]=$st
done < <(systemctl list-unit-files --type=service --no-legend --no-pager)

# `systemctl disable` of a unit that also has an init script runs update-rc.d twice
# through systemd-sysv-install, and each run reloads systemd: 3 reloads per service,
# 15-30 s for the stack on this machine. Disabling changes no unit definition, so the
# units are disabled without a reload and without the SysV detour, and the init
# scripts' rc links are turned off here as `update-rc.d NAME disable` would (S -> K in
# runlevels 2-5), so that both views agree.
off=() on=()
for s in "${STACK[@]}"; do
    [[ -n ${state[$s]:-} ]] || continue   # not installed
    in_list "$s" "${wanted[@]}" || off+=("$s.service")
done
for s in "${wanted[@]}"; do
    case ${state[$s]:-} in
        "") log "LAB_SERVICES names $s, which is not installed" ;;
        enabled) ;;
        *) on+=("$s.service") ;;
    esac
done
if [[ ${#off[@]} -gt 0 ]]; then
    SYSTEMCTL_SKIP_SYSV=1 systemctl disable --quiet --no-reload "${off[@]}"
    for u in "${off[@]}"; do
        for link in /etc/rc[2-5].d/S[0-9][0-9]"${u%.service}"; do
            [[ -L $link ]] || continue
            name=${link##*/}
            mv "$link" "${link%/*}/K${name:1}"
        done
    done
    # This unit is ordered before the stack's services, so their boot-time start jobs
    # are still waiting: a stop job replaces (cancels) each, nothing has run yet.
    systemctl stop --no-block "${off[@]}"
    log "first boot: disabled ${off[*]}"
fi
if [[ ${#on[@]} -gt 0 ]]; then
    systemctl enable --quiet "${on[@]}"
    # not part of this boot's transaction: start them now (they wait for this unit)
    systemctl start --no-block "${on[@]}"
    log "first boot: enabled ${on[*]}"
fi

mkdir -p "${MARKER%/*}"
touch "$MARKER"
log "first boot done (services: ${wanted[*]:-none})"
