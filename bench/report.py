#!/usr/bin/python3
"""BENCHMARKS.md from bench/run's results directory (hyperfine JSON, meta.json,
verify and profile output). Usage: bench/report.py RESULTS_DIR > BENCHMARKS.md"""

import glob
import json
import os
import statistics
import sys

res = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
meta = json.load(open(os.path.join(res, "meta.json")))
BENCH = os.path.dirname(os.path.abspath(__file__))

SCENARIOS = [
    ("fresh", "(a) first apply on fresh hosts"),
    ("noop", "(b) no-op apply"),
    ("change", "(c) apply, one template value changed on every web host"),
    ("diff", "(d) dry-run diff of that change"),
]
TOOLS = ["foobar-infra", "ansible", "pyinfra"]
LABEL = {3: "3 hosts (lb-01; web-01, MariaDB primary; web-02, MariaDB replica)",
         30: "30 web hosts (32 hosts: lb-01, web-01..web-30, db-01 MariaDB primary)"}
SHORT = {3: "3 hosts", 30: "30 web hosts (32 hosts)"}


def load(size, name):
    p = os.path.join(res, "%s-%s.json" % (size, name))
    if not os.path.exists(p):
        return None
    out = {}
    for r in json.load(open(p))["results"]:
        out[r["command"]] = r
    return out


def cell(r):
    if r is None:
        return "n/a"
    return "%.2f s (%.2f–%.2f)" % (r["median"], r["min"], r["max"])


def ratio(a, b):
    if a is None or b is None:
        return "n/a"
    return "%.1fx" % (a["median"] / b["median"])


def floor_of(size, command="floor"):
    """Median of all floor runs of the size (start and end), with min and max: plain ssh
    ("floor") or through foobar-infra's TCP connector ("floor-connector")."""
    times = []
    for name in ("floor", "floor-end"):
        d = load(size, name)
        if d and command in d:
            times += d[command]["times"]
    if not times:
        return None
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


sizes = [int(s) for s in meta["sizes"].split()]
out = []
w = out.append

w("# Benchmarks: foobar-infra, Ansible and pyinfra on the same job\n")
w("Written by `bash bench/run` (bench/report.py) on %s: rerun it rather than edit the "
  "tables. Raw hyperfine results are in `bench/results/`.\n" % meta["date"])
w("```\n%s\n```\n" % meta["command"])

w("## Machine and versions\n")
w("| | |\n|---|---|")
for k, label in [("date", "date (UTC)"), ("nproc", "CPUs (nproc)"), ("cpu", "CPU"), ("memory", "memory"),
                 ("kernel", "kernel"), ("os", "OS"), ("docker", "Docker"), ("openssh", "OpenSSH"),
                 ("hyperfine", "hyperfine"), ("foobar_infra", "foobar-infra"),
                 ("foobar_infra_binary", "foobar-infra binary"), ("git", "repository (git describe)"),
                 ("ansible_core", "ansible-core"), ("pyinfra", "pyinfra"), ("paramiko", "paramiko"),
                 ("python", "Python (venv, controller)")]:
    w("| %s | %s |" % (label, str(meta.get(k, "")).replace("|", "\\|")))
w("| runs | %s timed runs per command after %s warm-up run(s); the floor %s runs |\n"
  % (meta["runs"], meta["warmup"], 2 * int(meta["runs"])))

w("## What is measured\n")
w("""- **The lab**: Debian bookworm containers of `lab/up` with `LAB_NAME=bench`
  (`foobar-bench-*`, 10.232.0.0/16), no systemd (Debian init scripts). 3 hosts: lb-01
  (HAProxy), web-01 (nginx, MariaDB primary), web-02 (nginx, MariaDB replica), as in
  `lab/inventory.yaml`. 30 web hosts: lb-01, web-01..web-30 with the web role only
  (`LAB_SERVICES_WEB=nginx`, no MariaDB) and db-01, the one db-primary foobar-infra's
  inventory requires (32 hosts).
- **The same job** for the three tools: HAProxy config, validated (`haproxy -c`) and
  reloaded on change; nginx.conf and the site, checked (`nginx -t`) and nginx reloaded on
  change; the MariaDB .cnf, validated (`mariadbd --help --verbose`) and MariaDB restarted on
  change, one host at a time. foobar-infra: `apply`/`diff` of the inventory `bench/lab`
  writes (whatever else its version does on top, see the closing note). Ansible: `bench/ansible/site.yml`; pyinfra: `bench/pyinfra/deploy.py`; both
  render their own Jinja2 templates (`bench/*/templates/`), and `bench/verify-identical`
  checks before the timings that the three tools leave byte-identical files (and mode and
  owner) on every host, and that nginx, HAProxy and MariaDB run with them.
- **The same SSH settings**: one `ssh_config` for all (written by `bench/lab
  inventories`): lab key only, strict host key checking against the lab's known_hosts,
  `KexAlgorithms curve25519-sha256` (OpenSSH's default post-quantum exchange costs about
  0.1 s of CPU per connection on this machine). foobar-infra gets it through the
  inventory's `ssh.config_file`; Ansible through `-F` in `ansible_ssh_common_args` plus
  `-o KexAlgorithms=curve25519-sha256` in `ssh_args`; pyinfra (paramiko, which ignores
  `KexAlgorithms` in an ssh_config) through `ssh_config_file`, `ssh_key`,
  `ssh_known_hosts_file`, `ssh_strict_host_key_checking: yes` and
  `ssh_paramiko_connect_kwargs: {disabled_algorithms: {kex: [every other algorithm]}}`, so
  it negotiates `curve25519-sha256@libssh.org` (the same algorithm under its older name).
- **Ansible tuned** as its documentation recommends (`bench/ansible/ansible.cfg`):
  `pipelining = True`, `ControlMaster=auto` with `ControlPersist=60s`, `forks = 50`,
  `gather_facts: false`, `interpreter_python = /usr/bin/python3`, strategy **free**
  (measured faster than linear on the no-op: about 3.0 s against 4.2 s for 3 hosts), the
  `sysvinit` module for the handlers (the generic `service` module would gather a fact
  first), compression (`-C`, in Ansible's default `ssh_args`) off like for the other tools.
- **pyinfra** with its defaults (`-y`; parallel over all hosts), `files.template`,
  `server.shell` for the checkers, `sysvinit.service` for reload/restart (`_if=` the
  template changed; MariaDB with `_serial=True`).
- **Fresh SSH connections** for every timed run of every tool: foobar-infra and pyinfra
  close theirs at exit; Ansible's ControlPersist masters are ended before each run
  (`bench/lab close-masters`, untimed), except in the last row of (e).
- **The floor**: a fresh `ssh HOST true` to every host in parallel with the same
  ssh_config (`bench/lab floor`), measured at the start and at the end of each lab size;
  the table shows the median of all those runs. foobar-infra opens its TCP connections
  through its own connector (ssh's ProxyCommand, TCP_NODELAY and immediate ACKs:
  src/remote/connector.rs), so the floor is also measured that way (`bench/lab floor
  --connector`: the same `ssh HOST true` with that ProxyCommand), and foobar-infra's
  ratio is given against both.
- **Settling**: before the floor, (b), (c), (d) and the floor at the end, `bench/run`
  waits until the machine is idle (≥ 90% idle CPU over 3 consecutive seconds; at least
  10 s, at most 120 s; the waits are in `bench/results/load.txt`).
- Scenarios: (a) every run starts from hosts put back as `lab/up` made them
  (`bench/lab reset`, untimed: pristine configs and MariaDB datadir, services
  reloaded/restarted on them);
  (b) nothing to do; (c) before each run `bench/lab flip` switches nginx
  `client_max_body_size` 10m <-> 11m in all three inventories, so each run changes the
  site file on every web host and reloads nginx (the next flip checks that it did);
  (d) the same pending change, shown not applied (`foobar-infra diff`, exit 2 accepted;
  `ansible-playbook --check --diff`; `pyinfra --dry --diff`).
""")

for size in sizes:
    fl = floor_of(size)
    w("## %s\n" % LABEL[size])
    w("Medians, (min–max) in seconds; ratios are tool time / foobar-infra time.\n")
    w("| scenario | foobar-infra | Ansible | pyinfra | Ansible / foobar-infra | pyinfra / foobar-infra | foobar-infra / floor |")
    w("|---|---|---|---|---|---|---|")
    flc = floor_of(size, "floor-connector")
    if fl:
        w("| floor: fresh `ssh HOST true` to all %d hosts in parallel | %.2f s (%.2f–%.2f), %d runs | | | | | |"
          % (3 if size == 3 else 32, fl["median"], fl["min"], fl["max"], fl["n"]))
    if flc:
        w("| floor through foobar-infra's TCP connector (`ssh -o ProxyCommand=...`) | %.2f s (%.2f–%.2f), %d runs | | | | | |"
          % (flc["median"], flc["min"], flc["max"], flc["n"]))

    def vs_floors(f):
        if not f or not fl:
            return "n/a"
        text = "%.2fx" % (f["median"] / fl["median"])
        if flc:
            text += " (%.2fx the connector floor)" % (f["median"] / flc["median"])
        return text

    for key, label in SCENARIOS:
        d = load(size, key) or {}
        f, a, p = d.get("foobar-infra"), d.get("ansible"), d.get("pyinfra")
        fr = vs_floors(f)
        w("| %s | %s | %s | %s | %s | %s | %s |" % (label, cell(f), cell(a), cell(p), ratio(a, f), ratio(p, f), fr))
    d = load(size, "persist") or {}
    pers = [k for k in d if k.startswith("foobar-infra")]
    noop = load(size, "noop") or {}
    if pers:
        f = d[pers[0]]
        w("| (e) no-op apply, connections (and foobar-infra's agents) kept between runs (`%s`) | %s | | %s (no-op, fresh) | | %s | %s |"
          % (pers[0], cell(f), cell(noop.get("pyinfra")), ratio(noop.get("pyinfra"), f), vs_floors(f)))
    else:
        w("| (e) no-op apply, connections kept between runs | not available yet: `foobar-infra apply --help` has no persist option | | | | | |")
    a = d.get("ansible (ControlPersist kept)")
    if a:
        w("| (e) for reference: Ansible no-op with its ControlPersist masters kept between runs | | %s | | | | |" % cell(a))
    w("")

# ---------------------------------------------------------------- targets
w("## Targets of issue 7\n")
w("Medians of the runs above (same run, fresh SSH connections unless said).\n")
w("| # | target | measured | met? |")
w("|---|---|---|---|")


def get(size, scen, tool):
    d = load(size, scen) or {}
    return d.get(tool)


def check(num, text, pairs, floor_key=None):
    """pairs: list of (label, numerator, denominator, minimum ratio) and floor checks."""
    parts, ok = [], True
    for label, num_r, den_r, need, kind in pairs:
        if num_r is None or den_r is None:
            parts.append("%s: n/a" % label)
            ok = None if ok is not False else False
            continue
        r = num_r["median"] / den_r["median"]
        if kind == "faster":
            good = r >= need
            close = abs(r / need - 1) < 0.1  # near the target: two decimals, a percentage
            missed = ": missed by %.0f%%" % ((need / r - 1) * 100) if close else ": missed by %.1fx" % (need / r)
            parts.append(("%s %.2fx (needs ≥ %gx)%s" if close else "%s %.1fx (needs ≥ %gx)%s")
                         % (label, r, need, "" if good else missed))
        else:  # within
            good = r <= need
            parts.append("%s %.2fx the %s (needs ≤ %gx)%s" % (label, r, kind, need, "" if good else ": %.0f%% over" % ((r / need - 1) * 100)))
        ok = ok and good if ok is not None else ok
    verdict = "n/a" if ok is None else ("**met**" if ok else "**missed**")
    w("| %s | %s | %s | %s |" % (num, text, "; ".join(parts), verdict))


if 3 in sizes:
    fl3 = floor_of(3)
    for num, scen, text in [(1, "noop", "No-op apply, 3 hosts: ≥ 20x faster than Ansible, ≥ 5x than pyinfra, within 1.5x of the floor"),
                            (2, "diff", "Dry-run diff, 3 hosts: the same ratios")]:
        f = get(3, scen, "foobar-infra")
        check(num, text, [("Ansible/foobar-infra", get(3, scen, "ansible"), f, 20, "faster"),
                          ("pyinfra/foobar-infra", get(3, scen, "pyinfra"), f, 5, "faster"),
                          ("foobar-infra", f, fl3, 1.5, "floor"),
                          ("foobar-infra", f, floor_of(3, "floor-connector"), 1.5, "connector floor")])
if 30 in sizes:
    fl30 = floor_of(30)
    f = get(30, "noop", "foobar-infra")
    check(3, "No-op apply, 30 web hosts: ≥ 10x faster than Ansible, ≥ 2x than pyinfra, within 1.5x of the floor",
          [("Ansible/foobar-infra", get(30, "noop", "ansible"), f, 10, "faster"),
           ("pyinfra/foobar-infra", get(30, "noop", "pyinfra"), f, 2, "faster"),
           ("foobar-infra", f, fl30, 1.5, "floor"),
           ("foobar-infra", f, floor_of(30, "floor-connector"), 1.5, "connector floor")])
if 3 in sizes:
    f = get(3, "change", "foobar-infra")
    check(4, "Apply with one template changed, 3 hosts: ≥ 5x faster than pyinfra",
          [("pyinfra/foobar-infra", get(3, "change", "pyinfra"), f, 5, "faster")])
    d = load(3, "persist") or {}
    pers = [k for k in d if k.startswith("foobar-infra")]
    if pers:
        check(5, "Connections kept between runs: repeated no-op apply, 3 hosts, ≥ 30x faster than pyinfra",
              [("pyinfra/foobar-infra", get(3, "noop", "pyinfra"), d[pers[0]], 30, "faster")])
    else:
        w("| 5 | Connections kept between runs: repeated no-op apply, 3 hosts, ≥ 30x faster than pyinfra | not available yet (no persist option in `foobar-infra apply --help`) | **missed** |")
w("")

# ---------------------------------------------------------------- profile
w("## Where foobar-infra's time goes\n")
w("`bench/profile`: the no-op apply under `strace -f -ttt --seccomp-bpf -e "
  "trace=execve,connect,exit_group` (5 runs, medians), cut at the events that bound each "
  "phase; then the pieces of the one remote command timed on the hosts themselves.\n")
for size in sizes:
    p = os.path.join(res, "%d-profile.json" % size)
    if not os.path.exists(p):
        continue
    pr = json.load(open(p))
    m = pr["median"]
    fl = floor_of(size)
    w("### %s\n" % SHORT[size])
    w("| phase | median | share | what |")
    w("|---|---|---|---|")
    rows = [
        ("start", "exec -> first `ssh` exec: inventory, templates, secrets"),
        ("connect", "first `ssh` exec -> the first host's agent starts (%d hosts; spawns spread over %.0f ms; one host's connection %.0f–%.0f ms)"
         % (pr["runs"][0]["hosts"], m["ssh_spawn_spread"] * 1000, (m["per_host_connect_min"] or 0) * 1000, (m["per_host_connect_max"] or 0) * 1000)),
        ("remote", "the first agent started -> closing: the other hosts' connections, every host's observe"),
        ("close", "closing the masters, exit"),
    ]
    for k, what in rows:
        w("| %s | %.0f ms | %.0f%% | %s |" % (k, m[k] * 1000, 100 * m[k] / m["total"], what))
    w("| total (under strace) | %.0f ms | | floor (no strace): %s |" % (m["total"] * 1000, "%.0f ms" % (fl["median"] * 1000) if fl else "n/a"))
    cm = pr.get("change_median") or {}
    if cm.get("observe") is not None:
        w("\nAn apply that changes the site file on every web host (scenario c), without strace: "
          "one agent per host serves its observe, stage and commit requests, and the rounds are "
          "cut where `-v` announces the first request of each (`Agent HOST OP`; median of 5):\n")
        w("| phase | median | share | what |")
        w("|---|---|---|---|")
        for k, what in (("start_to_observe", "exec -> the first observe request (a host connected)"),
                        ("observe", "-> the first stage request: every host observed, the diff made"),
                        ("stage", "-> the first commit request: every host staged and validated"),
                        ("commit", "-> exit: swap, reloads, health checks, closing")):
            w("| %s | %.0f ms | %.0f%% | %s |" % (k, cm[k] * 1000, 100 * cm[k] / cm["total"], what))
        w("| total | %.0f ms | | |" % (cm["total"] * 1000))
    ag = pr.get("agent_seconds") or {}
    if ag.get("noop") or ag.get("change"):
        w("\nThe agent process's own lifetime on each host (`python3` start to exit, timed by a "
          "temporary wrapper on the host; one process per host per run; median of 5; all hosts "
          "run at once):\n")
        w("| host | no-op (observe) | change (observe, stage, commit) |")
        w("|---|---|---|")
        names = list(dict.fromkeys(list(ag.get("noop", {})) + list(ag.get("change", {}))))
        shown = names if len(names) <= 4 else names[:3] + names[-1:]
        for h in shown:
            n, c = ag.get("noop", {}).get(h, {}), ag.get("change", {}).get(h, {})
            f = lambda d: "%.0f ms" % (d["agent"] * 1000) if "agent" in d else ""
            w("| %s | %s | %s |" % (h, f(n), f(c)))
        if len(names) > len(shown):
            w("\n(%d hosts; the first three and the last shown.)" % len(names))
    cmds = pr.get("remote_commands", {})
    counts = sorted({len(v) for v in cmds.values()})
    w("\nRemote commands per host in a no-op (`-v`): %s (%s).\n"
      % ("/".join(str(c) for c in counts), ", ".join(sorted({x for v in cmds.values() for x in v}))))
    w("Pieces of the remote command, timed on the host (median of 5):\n")
    hosts = list(pr["remote_pieces"])
    keys = []
    for h in hosts:
        for k in pr["remote_pieces"][h]:
            if k not in keys:
                keys.append(k)
    w("| piece | " + " | ".join(hosts) + " |")
    w("|---|" + "---|" * len(hosts))
    for k in keys:
        w("| %s | %s |" % (k, " | ".join(
            "%.0f ms" % (pr["remote_pieces"][h][k] * 1000) if k in pr["remote_pieces"][h] else "" for h in hosts)))
    w("")

# ---------------------------------------------------------------- CPU cost
cpu_files = [(size, os.path.join(res, "%d-cpu.json" % size)) for size in sizes]
if any(os.path.exists(p) for _, p in cpu_files):
    w("## What a no-op costs the machine\n")
    w("`bench/cpu-cost`: machine-wide CPU time (user+system from /proc/stat: the "
      "controller, the ssh clients and, through Docker, every sshd, agent and module on "
      "the hosts) of one no-op run, median of 5; on %s CPUs, CPU time / wall time near "
      "%s means the run was CPU-bound. Anything else running on the machine is counted "
      "too: compare the wall times with the tables above.\n" % (meta["nproc"], meta["nproc"]))
    w("| lab | tool | wall | CPU time | CPU / wall |")
    w("|---|---|---|---|---|")
    for size, p in cpu_files:
        if not os.path.exists(p):
            continue
        c = json.load(open(p))
        for name, v in c["tools"].items():
            w("| %s | %s | %.2f s | %.2f s | %.1f |" % (SHORT[size], name, v["wall_s"], v["cpu_s"],
                                                     v["cpu_s"] / v["wall_s"] if v["wall_s"] else 0))
    w("")

# ---------------------------------------------------------------- identical files
for size in sizes:
    p = os.path.join(res, "%d-verify.txt" % size)
    if os.path.exists(p):
        last = [l for l in open(p).read().splitlines() if l.startswith(("IDENTICAL", "DIFFERENT"))]
        w("`bench/verify-identical`, %s: %s\n" % (SHORT[size], "; ".join(last) or "no verdict"))

loads = os.path.join(res, "load.txt")
if os.path.exists(loads):
    w("Load average (1, 5, 15 min) before each timing: " + "; ".join(
        "%s/%s: %s" % tuple([l.split()[0], l.split()[1], " ".join(l.split()[2:])]) for l in open(loads).read().splitlines()) + ".\n")

analysis = os.path.join(BENCH, "analysis.md")
if os.path.exists(analysis):
    w(open(analysis).read().rstrip() + "\n")

sys.stdout.write("\n".join(out))
