"""Starting at boot: whether a service starts when the host boots (observe reports it for
every service it is asked about), and the changes commit makes to it ("boot" entries of
its request; every start or restart also enables: enable_service, from services.py)."""

import os

from .core import AgentError, headline, safe_name, tail
from .proc import capture, run


RC_DIR = "/etc/rc2.d"  # Debian's default runlevel
INIT_D = "/etc/init.d"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
# What `systemctl is-enabled` says of a unit that starts at boot, or that `systemctl enable`
# cannot change: a static, indirect or generated unit has no [Install] of its own (it runs
# when something else pulls it in), an alias is enabled with the unit it names. Not:
# enabled-runtime and transient (gone at the next boot), linked, masked, disabled,
# not-found. An init script without a unit file is answered by systemd-sysv-install
# (enabled or disabled).
BOOT_STATES = frozenset(("enabled", "static", "alias", "indirect", "generated"))


def boot_enabled(names, init):
    """name -> True when it starts at boot, False when not, None when systemd gave no
    answer for it. Starts no process under sysv and at most one under systemd."""
    if init == "systemd":
        return systemd_enabled(names)
    try:
        entries = os.listdir(RC_DIR)
    except OSError:
        entries = []
    started = {e[3:] for e in entries if len(e) > 3 and e[0] == "S" and e[1:3].isdigit()}
    return {n: n in started for n in names}


def unit_kind(name):
    """"unit" (a unit file, or a mask, in systemd's directories), "sysv" (an init script
    only) or None (neither: nothing could start it)."""
    if any(os.path.lexists("%s/%s.service" % (d, name)) for d in UNIT_DIRS):
        return "unit"
    return "sysv" if os.path.exists(os.path.join(INIT_D, name)) else None


def systemd_enabled(names):
    kinds = {n: unit_kind(n) for n in names}
    states = {n: "not-found" for n in names if kinds[n] is None}
    # One `systemctl is-enabled` for all: it prints one line per name, the init-script-only
    # names first (it hands them to systemd-sysv-install before the others). Names without
    # any unit are not asked: systemd 252 stops at the first it cannot find (257 prints
    # "not-found" and goes on).
    asked = [n for n in names if kinds[n] == "sysv"] + [n for n in names if kinds[n] == "unit"]
    if asked:
        _, out, _ = capture(["systemctl", "is-enabled"] + asked, timeout=30)
        lines = out.split()
        if len(lines) != len(asked):  # not the answer expected: ask one at a time
            lines = [(capture(["systemctl", "is-enabled", n], timeout=30)[1].split() or [None])[0]
                     for n in asked]
        states.update(zip(asked, lines))
    return {n: None if states.get(n) is None else states[n] in BOOT_STATES for n in names}


def systemd_show(names):
    """name -> (ActiveState, UnitFileState) from one `systemctl show` for all `names`
    (units with a unit file: an init script's generated unit says nothing true of its
    links), or {} when the answer is not one block per name: the caller then asks
    `systemctl is-active` / `is-enabled` as before."""
    if not names:
        return {}
    code, out, _ = capture(["systemctl", "show", "--property=ActiveState,UnitFileState", "--"] + names,
                           timeout=30)
    blocks = out.strip("\n").split("\n\n")
    if code != 0 or len(blocks) != len(names):
        return {}
    shown = {}
    for name, block in zip(names, blocks):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if not props.get("ActiveState"):
            return {}
        # An empty property is left out: a unit without a unit file state has none.
        shown[name] = (props["ActiveState"], props.get("UnitFileState", ""))
    return shown


def check_boot(boot):
    """The "boot" entries of a commit request, [{"service": NAME, "enable": BOOL}],
    checked before anything changes."""
    if not isinstance(boot, list):
        raise AgentError("request", "boot must be a list")
    for b in boot:
        if not isinstance(b, dict) or not isinstance(b.get("enable"), bool):
            raise AgentError("request", "boot entries must be {\"service\": NAME, \"enable\": true|false}")
        safe_name(b.get("service"), "service")
    return boot


def set_boot(name, enable, init):
    """(exit code, output). sysv: `update-rc.d NAME defaults` adds links only where there
    are none, so `enable` follows it (it turns a disabled service's K links back into S
    links); disabling leaves K links, or, once its init script is gone, removes them."""
    if init == "systemd":
        return run(["systemctl", "enable" if enable else "disable", name], timeout=60)
    if enable:
        code, out = run(["update-rc.d", name, "defaults"], timeout=60)
        if code != 0:
            return code, out
        code, more = run(["update-rc.d", name, "enable"], timeout=60)
        return code, out + more
    if not os.path.exists(os.path.join(INIT_D, name)):
        return run(["update-rc.d", name, "remove"], timeout=60)
    return run(["update-rc.d", name, "disable"], timeout=60)


def apply_boot(entries, init, done):
    """Enable or disable each service at boot, where it is not so already; each change
    made is appended to `done` (for undo_boot). AgentError at the first failure."""
    for b in entries:
        name, enable = b["service"], b["enable"]
        if boot_enabled([name], init).get(name) == enable:
            continue
        code, out = set_boot(name, enable, init)
        if code != 0:
            raise AgentError("service", "%s %s at boot failed (exit %s)"
                             % ("enabling" if enable else "disabling", name, code),
                             service=name, action="enable" if enable else "disable", output=tail(out.strip()))
        done.append({"service": name, "enable": enable})


def undo_boot(done, init):
    """Put back what apply_boot changed (after the files are restored); what failed."""
    problems = []
    for b in reversed(done or []):
        try:
            code, out = set_boot(b["service"], not b["enable"], init)
        except OSError as e:
            code, out = -1, str(e)
        if code != 0:
            problems.append("%s at boot: %s" % (b["service"], headline(out) or "exit %s" % code))
    return problems


def drop_dangling(done, init):
    """sysv: the links of a service disabled in this commit whose init script the commit
    removed (its role left the host): `update-rc.d NAME remove`, best effort."""
    if init == "systemd":
        return
    for b in done:
        if not b["enable"] and not os.path.exists(os.path.join(INIT_D, b["service"])):
            run(["update-rc.d", b["service"], "remove"], timeout=60)


def enable_service(name, init):
    """Start at boot (boot.py), also when it was disabled (`update-rc.d NAME disable`,
    `systemctl disable`); nothing when it already starts at boot. Best effort: the
    next observe reports a service that is still off at boot."""
    if init == "systemd" or os.path.exists(os.path.join(INIT_D, name)):
        if boot_enabled([name], init).get(name) is not True:
            set_boot(name, True, init)
