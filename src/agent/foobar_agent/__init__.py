"""foobar-infra remote agent.

Run on a managed host as ONE ssh exec: `python3 -I -S -c BOOTSTRAP ...` (or through
`sudo -n`), the package's modules and then the request(s) on stdin (src/remote/agent.rs
sends them; argv carries no data). Reads one JSON request on stdin, writes one JSON
answer on stdout, exits 0 whenever an answer was written (non-zero with a traceback on
stderr only when the agent itself crashed). With "serve", requests come framed until
stdin closes (main.py); with "listen", the kept agent starts (daemon.py).

The agent owns, on the host:
  * /var/lib/foobar-infra/ (0700): lock.flock, lock.json, manifest.json, history.jsonl,
    runs/RUNID/{staged.json, backup.json, backup/..., manifest.prev.json} (paths.py,
    state.py, lock.py);
  * staged files `TARGET.foobar-new-RUNID` beside their targets, nginx test trees
    `ROOT/.foobar-stage-RUNID/`, and the target files the tool manages (stage.py,
    validate.py, commit.py);
  * the service actions (reload/restart/start) and their health checks (services.py,
    actions.py, live.py).

Operations: ops.py lists them all (see docs/DESIGN.md, "Remote agent protocol").
Python 3.9+ stdlib only; the modules import each other explicitly (relative imports,
so the package runs under whatever name the bootstrap gives it). No secret ever goes
into a child process's argv or environment: file contents arrive base64 in the request
and are written to files; subprocess output never goes to our own stdout.
"""

from .main import entry, main

__all__ = ["entry", "main"]
