"""The agent's entry point: one request to the end of stdin, requests framed until stdin
closes ("serve"), or the kept agent ("listen", daemon.py)."""

import json
import os
import sys

from . import session
from .core import traceback
from .ops import answer_of


def main(argv=()):
    """One request on stdin to EOF, one answer; or, with "serve", requests framed as
    `LENGTH\n` + LENGTH bytes, one answer line each, until stdin closes (the tool keeps
    one agent per host for a whole run: observe, stage and commit in one process)."""
    os.umask(0o022)
    out = sys.stdout
    if argv[:1] == ["listen"]:
        from .daemon import listen
        return listen(argv[1:])
    if "serve" not in argv:
        out.write(json.dumps(answer_of(sys.stdin.buffer.read()), sort_keys=True) + "\n")
        out.flush()
        return 0
    inp = sys.stdin.buffer
    session.SERVING = True
    while True:
        head = inp.readline()
        if not head:
            abandon_staged()
            return 0
        raw = inp.read(int(head))
        try:
            out.write(json.dumps(answer_of(raw), sort_keys=True) + "\n")
            out.flush()
        except OSError:  # the tool is gone (e.g. killed) before its answer: as at EOF
            abandon_staged()
            return 0


def entry(argv=()):
    """What the bootstrap calls (src/remote/agent.rs): main's exit code, or 2 with a
    traceback on stderr when the agent itself crashed."""
    try:
        sys.exit(main(argv))
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        sys.exit(2)


def abandon_staged():
    """stage.py's, loaded only when this agent staged something (an observe does not)."""
    if session.STAGED_RUNS:
        from .stage import abandon_staged as abandon
        abandon()
