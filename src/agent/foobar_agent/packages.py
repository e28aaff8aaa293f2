"""Debian packages: which are installed (observe), and installing the missing ones (stage)."""

import os

from .core import AgentError, tail
from .proc import run, run_split


def dpkg_installed(pkgs):
    if not pkgs:
        return {}
    # dpkg keeps a file list for each installed package: reading the directory is
    # much faster than starting dpkg-query.
    info = "/var/lib/dpkg/info"
    if os.path.isdir(info):
        names = set(os.listdir(info))
        arch = os.uname().machine.replace("x86_64", "amd64").replace("aarch64", "arm64")
        return {p: (p + ".list") in names or ("%s:%s.list" % (p, arch)) in names for p in pkgs}
    code, out, _ = run_split(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"] + list(pkgs))
    status = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            status[parts[0]] = status.get(parts[0], False) or parts[1] == "installed"
    return {p: status.get(p.split(":")[0], False) for p in pkgs}


def install_packages(pkgs):
    missing = [p for p, ok in dpkg_installed(pkgs).items() if not ok]
    if not missing:
        return []
    argv = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
            "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"] + missing
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    code, out = run(argv, timeout=1800, env_extra=env)
    if code != 0 and ("Unable to locate package" in out or "has no installation candidate" in out):
        ucode, uout = run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=120"], timeout=600, env_extra=env)
        code, out2 = run(argv, timeout=1800, env_extra=env)
        out = out + "\n--- apt-get update (exit %s) ---\n%s\n--- retry ---\n%s" % (ucode, tail(uout, 2000), out2)
    if code != 0:
        raise AgentError("install", "apt-get install %s failed (exit %s)" % (" ".join(missing), code),
                         output=tail(out, 4000))
    return missing

