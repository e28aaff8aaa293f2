"""The agent's own files on the host: its state directory (lock, manifest, history,
runs, the bootstrap's cache of the agent, the firewall guard's files), and where it
learns the init system. Read as `paths.NAME` when used, so that tests can move them
all under a temporary root (`under`); production never moves them."""

import os

STATE_DIR = "/var/lib/foobar-infra"
LOCK = os.path.join(STATE_DIR, "lock.json")
LOCK_HOLD = os.path.join(STATE_DIR, "lock.flock")  # the lock: its flock (see take_lock)
GUARD = os.path.join(STATE_DIR, ".lock-guard")
MANIFEST = os.path.join(STATE_DIR, "manifest.json")
HISTORY = os.path.join(STATE_DIR, "history.jsonl")
RUNS = os.path.join(STATE_DIR, "runs")
# The file a first apply replaced at each path (the distribution's nginx.conf, say), put
# back when the tool stops managing that path (commit.py).
ORIGINALS = os.path.join(STATE_DIR, "originals")
AGENT_CACHE = os.path.join(STATE_DIR, "agent")  # written by the bootstrap (src/remote/agent.rs)
FW_GUARD = os.path.join(STATE_DIR, "firewall-guard.json")
FW_PREV = os.path.join(STATE_DIR, "firewall-prev.nft")
SYSTEMD_RUN = "/run/systemd/system"  # present while systemd is PID 1

DEFAULTS = {name: value for name, value in globals().items() if name.isupper()}


def under(root):
    """Tests only: every path above as it is below `root` ("": the defaults again)."""
    globals().update({name: root + value for name, value in DEFAULTS.items()})

