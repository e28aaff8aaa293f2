"""What this agent process holds for the tool between requests: whether it serves a
connection (main.py's "serve"), and the runs it staged that are not committed yet."""

from .core import AgentError


SERVING = False  # main(): requests come framed over the tool's connection
STAGED_RUNS = {}  # run id -> its history record, staged by this agent and not yet committed


def ensure_controller():
    """Raise AgentError("gone") once the tool's connection is gone (stdin, the SSH
    channel, hung up: the tool gave up on this host, e.g. it stopped answering its SSH
    keepalives). A commit then undoes itself rather than finish after the tool has
    reported this host unchanged."""
    if not SERVING:
        return
    import select
    p = select.poll()
    p.register(0, select.POLLIN | select.POLLPRI)
    for _, ev in p.poll(0):
        if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            raise AgentError("gone", "the tool's connection to this host was lost during the "
                             "commit: it was undone here")

