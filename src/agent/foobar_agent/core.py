"""What every module of the agent uses: modules imported on first use, the agent's
error (its answer), checks of the names and paths in a request, and text helpers
(output tails, base64, a validator's headline)."""

import sys
import time

from . import paths


class _Lazy:
    """A module imported on first use: a no-op observe never pays for what only
    staging, committing or the database need. Imports are most of its cost: on the lab
    (containers on fuse-overlayfs) `re` alone costs ~14 ms."""

    def __init__(self, name):
        self._name, self._module = name, None

    def __getattr__(self, attr):
        if self._module is None:
            __import__(self._name)
            self._module = sys.modules[self._name]
        return getattr(self._module, attr)


class Pattern:
    """A regular expression compiled (and `re` imported) on its first use."""

    def __init__(self, pattern, flags=0):
        self.pattern, self.flags, self._re = pattern, flags, None

    def __getattr__(self, attr):
        if self._re is None:
            self._re = re.compile(self.pattern, self.flags)
        return getattr(self._re, attr)


def chars_ok(s, allowed, maxlen, first=None):
    """s is 1..maxlen characters of `allowed` (its first one of `first`): the names the
    observe path checks, without importing `re`."""
    return (isinstance(s, str) and 0 < len(s) <= maxlen and (first is None or s[0] in first)
            and all(c in allowed for c in s))


ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


hashlib = _Lazy("hashlib")  # not _sha256 (gone in 3.12): OpenSSL loads only where something is hashed
re = _Lazy("re")
datetime = _Lazy("datetime")
fcntl = _Lazy("fcntl")
shutil = _Lazy("shutil")
socket = _Lazy("socket")
subprocess = _Lazy("subprocess")
tempfile = _Lazy("tempfile")
traceback = _Lazy("traceback")
RUN_ID_CHARS = ALNUM | frozenset("_-")  # no dots: a staged name must never end in .conf/.cnf
NAME_CHARS = ALNUM | frozenset("@_.+:-")  # services and packages: [A-Za-z0-9][A-Za-z0-9@_.+:-]{0,127}


def name_ok(n):
    return chars_ok(n, NAME_CHARS, 128, first=ALNUM)


OUTPUT_TAIL = 8000


class AgentError(Exception):
    def __init__(self, kind, message, path=None, service=None, output=None, **extra):
        Exception.__init__(self, message)
        self.kind, self.message = kind, message
        self.path, self.service, self.output, self.extra = path, service, output, extra

    def answer(self):
        err = {"kind": self.kind, "message": self.message}
        for key in ("path", "service", "output"):
            if getattr(self, key) is not None:
                err[key] = getattr(self, key)
        err.update(self.extra)
        return {"ok": False, "error": err}


def now():
    return time.time()


def pauses(first=0.01, most=0.2):
    """Waits between two polls of something that changes soon: 10, 20, 40, 80, 160 ms,
    then 200 ms each. A reload shows within milliseconds; a flat 200 ms wait added
    up to 200 ms to every proven reload (see BENCHMARKS.md, session 10)."""
    wait = first
    while True:
        yield wait
        wait = min(most, wait * 2)


def iso(ts):
    try:
        return datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def tail(text, limit=OUTPUT_TAIL):
    return text if len(text) <= limit else "...\n" + text[-limit:]


def safe_path(p, what="path"):
    if not isinstance(p, str) or not p.startswith("/") or "\0" in p or p == "/":
        raise AgentError("request", "%s must be an absolute file path: %r" % (what, p), path=str(p))
    parts = p.split("/")
    if ".." in parts or "." in parts or "" in parts[1:]:
        raise AgentError("request", "%s must be a normalised path without '..': %r" % (what, p), path=p)
    if p == paths.STATE_DIR or p.startswith(paths.STATE_DIR + "/"):
        raise AgentError("request", "%s is inside the agent's state directory: %s" % (what, p), path=p)
    return p


def safe_name(n, what):
    if not name_ok(n):
        raise AgentError("request", "invalid %s name: %r" % (what, n))
    return n


def run_id_of(req):
    rid = req.get("run_id")
    if not chars_ok(rid, RUN_ID_CHARS, 64):
        raise AgentError("request", "run_id must be 1-64 of [A-Za-z0-9_-]: %r" % (rid,))
    return rid


def parse_mode(m, default=0o644):
    if m is None:
        return default
    try:
        v = int(m, 8) if isinstance(m, str) else int(m)
    except ValueError:
        raise AgentError("request", "invalid mode %r (want an octal string like \"0644\")" % (m,))
    if not 0 <= v <= 0o7777:
        raise AgentError("request", "mode out of range: %r" % (m,))
    return v


def b64encode(data):
    import binascii  # builtin; the base64 module would import re
    return binascii.b2a_base64(data, newline=False).decode("ascii")


B64_CHARS = ALNUM | frozenset("+/=")


def b64decode(text):
    """Strict base64 (as base64.b64decode(validate=True)): ValueError on anything else."""
    import binascii
    if not isinstance(text, str) or not all(c in B64_CHARS for c in text):
        raise ValueError("not base64")
    try:
        return binascii.a2b_base64(text)
    except binascii.Error as e:
        raise ValueError(str(e))


LOG_PREFIXES = (  # nginx, MariaDB and HAProxy line prefixes that only add noise to a headline
    (Pattern(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: "), r"\1 "),
    (Pattern(r"^\d{4}-\d\d-\d\d +\d+:\d\d:\d\d \d+ "), ""),
    (Pattern(r"^\[(ALERT|WARNING)\] +\(\d+\) : "), ""),
)
SEVERE = Pattern(r"\[(emerg|crit|alert|error|ERROR|ALERT)\]|adjusted|error", 2)  # re.I


def headline(out):
    """The most telling line of a validator's output, without timestamp/pid prefixes."""
    lines = [l.strip() for l in out.splitlines() if l.strip()]
    best = next((l for l in lines if SEVERE.search(l)), lines[0] if lines else "")
    for rx, repl in LOG_PREFIXES:
        best = rx.sub(repl, best)
    return best

