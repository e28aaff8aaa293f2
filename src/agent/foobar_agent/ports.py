"""Who listens on the TCP ports the stack needs: observe's "ports" ([{"port": N, "service": UNIT, "names": [NAME...]}],
src/run/preflight.rs) are looked up among the host's listening TCP sockets, and each
socket's holder is found through /proc/PID/fd (root reads them all). The tool decides
what is a conflict. The service's pid file, then the processes called one of
"names", are read first: a host whose ports are held by their own services costs a
few directory listings, and one with nothing listening none.

The sockets come from the kernel's sock_diag netlink interface, asking for listening
sockets only (what `ss -ltn` does): reading /proc/net/tcp walks every bucket of the
established-connection table however few sockets there are (16 ms per file measured
on the lab's machine kind, 262,144 buckets; 0.3 ms for both families by netlink).
/proc/net/tcp and tcp6 (state 0A) remain the fallback where netlink is refused."""

import os
import sys

from .core import AgentError, name_ok, safe_name
from .services import service_pid


TCP_LISTEN = 10  # 0A in /proc/net/tcp


def address_text(raw):
    """A 4- or 16-byte address in network byte order as text."""
    if len(raw) == 4:
        return "%d.%d.%d.%d" % tuple(raw)
    return ":".join("%x" % (raw[i] << 8 | raw[i + 1]) for i in range(0, 16, 2))


def diag_listeners(ports):
    """{inode: (port, address)} of the TCP sockets listening on one of `ports`, from
    NETLINK_SOCK_DIAG (inet_diag_req_v2 / inet_diag_msg of linux/inet_diag.h)."""
    import _socket  # the C module, as in haproxy_cmd: `socket` costs ~7 ms to import
    order = sys.byteorder
    found = {}
    s = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM, 4)  # NETLINK_SOCK_DIAG
    s.settimeout(5)
    try:
        for seq, family in enumerate((_socket.AF_INET, _socket.AF_INET6), 1):
            # family, IPPROTO_TCP, no extensions, states = 1 << TCP_LISTEN, any socket id
            req = bytes((family, 6, 0, 0)) + (1 << TCP_LISTEN).to_bytes(4, order) + bytes(48)
            # nlmsghdr: length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, pid
            head = ((16 + len(req)).to_bytes(4, order) + (20).to_bytes(2, order)
                    + (0x301).to_bytes(2, order) + seq.to_bytes(4, order) + bytes(4))
            s.send(head + req)
            done = False
            while not done:
                data = s.recv(1 << 16)
                off = 0
                while off + 16 <= len(data):
                    length = int.from_bytes(data[off:off + 4], order)
                    kind = int.from_bytes(data[off + 4:off + 6], order)
                    if kind == 3:  # NLMSG_DONE
                        done = True
                        break
                    if kind == 2:  # NLMSG_ERROR
                        raise OSError(-int.from_bytes(data[off + 16:off + 20], order, signed=True),
                                      "sock_diag refused")
                    m = data[off + 16:off + length]
                    if len(m) >= 72 and m[1] == TCP_LISTEN:
                        port = int.from_bytes(m[4:6], "big")
                        if port in ports:
                            raw = m[8:12] if m[0] == _socket.AF_INET else m[8:24]
                            found[str(int.from_bytes(m[68:72], order))] = (port, address_text(raw))
                    off += max(16, (length + 3) & ~3)
                if not data:
                    break
    finally:
        s.close()
    return found


def proc_listeners(ports):
    """What diag_listeners finds, from /proc/net/tcp and tcp6 (words in host order)."""
    found = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            f = open(path)
        except OSError:  # no IPv6 on this host
            continue
        with f:
            f.readline()
            for line in f:
                parts = line.split(None, 10)
                if len(parts) < 10 or parts[3] != "%02X" % TCP_LISTEN:
                    continue
                addr, _, port = parts[1].partition(":")
                port = int(port, 16)
                if port in ports and parts[9] != "0":
                    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] if sys.byteorder == "little"
                                   else bytes.fromhex(addr[i:i + 8]) for i in range(0, len(addr), 8))
                    found[parts[9]] = (port, address_text(raw))
    return found


def listening_sockets(ports):
    """{inode: (port, address)} of the TCP sockets listening on one of `ports`."""
    try:
        return diag_listeners(ports)
    except OSError:
        return proc_listeners(ports)


def socket_inodes(pid):
    """The inodes of the sockets process `pid` has open."""
    d = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(d)
    except OSError:
        return ()
    inodes = []
    for fd in fds:
        try:
            link = os.readlink(d + "/" + fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.append(link[8:-1])
    return inodes


def proc_comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


def socket_holders(inodes, first, names):
    """{inode: pid} for the sockets: the pids `first`, then processes whose name starts
    with one of `names`, then every other process, until each socket has a holder."""
    held = {}

    def look(pids):
        for pid in pids:
            if len(held) == len(inodes):
                return
            for inode in socket_inodes(pid):
                if inode in inodes and inode not in held:
                    held[inode] = pid
    look(first)
    if len(held) < len(inodes):
        pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
        seen = set(first)
        named = [p for p in pids if p not in seen and proc_comm(p).startswith(names)] if names else []
        look(named)
        seen.update(named)
        look(p for p in pids if p not in seen)
    return held


def unit_of(pid, comm, exe, init):
    """The service a process runs under: its systemd unit (from its cgroup) or, on
    init-script hosts, the init script of its name. None: started some other way."""
    if init == "systemd":
        try:
            with open("/proc/%d/cgroup" % pid) as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        for line in lines:
            for part in reversed(line.rpartition(":")[2].split("/")):
                if part.endswith(".service") and name_ok(part[:-8]):
                    return part[:-8]
        return None
    for n in (comm, exe):
        if n and name_ok(n) and os.path.isfile("/etc/init.d/" + n):
            return n
    return None


def process_of(pid, init):
    comm = proc_comm(pid) or None
    try:
        exe = os.path.basename(os.readlink("/proc/%d/exe" % pid))
        if exe.endswith(" (deleted)"):  # upgraded since it started
            exe = exe[:-10]
    except OSError:
        exe = None
    return {"pid": pid, "process": comm, "exe": exe, "unit": unit_of(pid, comm, exe, init)}


def listeners_observe(wanted, init):
    """Every listening socket on a port of `wanted` and the process holding it."""
    if not isinstance(wanted, list):
        raise AgentError("request", "ports must be a list of {port, service, names}")
    ports, first, names = set(), [], []
    for w in wanted:
        port = int(w.get("port"))
        if not 0 < port < 65536:
            raise AgentError("request", "invalid port %r" % port)
        ports.add(port)
        if w.get("service"):
            pid = service_pid(safe_name(w["service"], "service"))
            if pid and pid not in first:
                first.append(pid)
        names.extend(safe_name(n, "process name") for n in w.get("names") or [])
    sockets = listening_sockets(ports) if ports else {}
    if not sockets:
        return []
    held = socket_holders(sockets, first, tuple(names))
    out = []
    for inode, (port, address) in sorted(sockets.items(), key=lambda s: s[1]):
        entry = {"port": port, "address": address}
        if inode in held:
            entry.update(process_of(held[inode], init))
        out.append(entry)
    return out
