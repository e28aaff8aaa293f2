"""The service actions of a commit or rollback (reload, restart, start, stop) and the
checks that prove each took: checked before anything changes, run in order, and run
once more after a restore."""

from .core import AgentError, headline, now, safe_name, safe_path, tail
from .firewall import firewall_arm, firewall_disarm
from .live import LIVE_KINDS, live_snapshot, run_check
from .services import log_tail, service_action
from .session import ensure_controller


def check_actions(actions):
    """Validate actions and checks before anything changes."""
    if not isinstance(actions, list):
        raise AgentError("request", "actions must be a list")
    for a in actions:
        name = safe_name(a.get("service") if isinstance(a, dict) else None, "service")
        if a.get("action") not in ("reload", "restart", "start", "stop"):
            raise AgentError("request", "unknown action %r for %s" % (a.get("action"), name), service=name)
        g = a.get("guard")
        if g is not None and not (isinstance(g, dict) and isinstance(g.get("path"), str)
                                  and isinstance(g.get("seconds"), (int, float)) and 5 <= g["seconds"] <= 3600):
            raise AgentError("request", "invalid guard for %s" % name, service=name)
        c = a.get("check")
        if not c:
            continue
        if not isinstance(c, dict):
            raise AgentError("request", "check of %s must be an object" % name, service=name)
        try:
            float(c.get("timeout_s", 0))
            if "live" in c:
                if c["live"] not in LIVE_KINDS:
                    raise ValueError("unknown live check %r" % c["live"])
                if c["live"] in ("haproxy", "mariadb"):
                    safe_path(c.get("config"), "check.config")
                if not isinstance(c.get("tcp", []), list):
                    raise ValueError("tcp must be a list of HOST:PORT")
            elif "tcp" in c:
                int(str(c["tcp"]).rpartition(":")[2])
            elif "command" in c:
                if not isinstance(c["command"], list) or not c["command"] or \
                        not all(isinstance(x, str) for x in c["command"]):
                    raise ValueError("command must be a non-empty list of strings")
            elif not c.get("running"):
                raise ValueError("want one of tcp, command, running")
        except (TypeError, ValueError) as e:
            raise AgentError("request", "invalid check for %s: %s" % (name, e), service=name)
    return actions


def run_actions(actions, init, rid=None, watch=False):
    """Run actions and their checks in order; raise AgentError(service) at the first failure.
    An action with "guard" (the firewall) arms the anti-lockout guard first. With `watch`
    (a commit), each action first makes sure the tool is still there."""
    done = []
    for a in actions:
        if watch:
            ensure_controller()
        name = a["service"]
        t0 = now()
        guard = a.get("guard")
        if guard and rid and a["action"] != "stop":
            firewall_arm(rid, safe_path(guard["path"], "guard.path"), float(guard["seconds"]))
        before = live_snapshot(name, a.get("check"))
        try:
            code, out, ran = service_action(name, a["action"], init)
        except BaseException:
            if guard:
                firewall_disarm()
            raise
        if code != 0 and guard:
            firewall_disarm()
        if code != 0:
            raise AgentError("service", "%s %s failed (exit %s)" % (name, ran, code), service=name,
                             action=ran, output=tail(out.strip() + log_tail(name)))
        problem = run_check(name, a.get("check"), init, before, ran, t0, out)
        if problem:
            if guard:
                firewall_disarm()
            raise AgentError("service", "%s %s: check failed: %s" % (name, ran, problem.splitlines()[0]),
                             service=name, action=ran,
                             output=tail((out.strip() + "\n" + problem).strip()
                                         + ("" if "live" in a["check"] else log_tail(name))))
        done.append({"service": name, "action": ran, "seconds": round(now() - t0, 3)})
    return done


def reload_again(actions, init):
    """After restoring files: reload/restart each service once more and, where it has a
    live check, confirm it runs the restored files. Returns what did not come back."""
    seen, problems = set(), []
    for a in actions:
        name = a["service"]
        if name in seen:
            continue
        seen.add(name)
        check = a.get("check") if "live" in (a.get("check") or {}) else None
        before, t0 = live_snapshot(name, check), now()
        try:
            code, out, ran = service_action(name, "restart" if a["action"] == "restart" else "reload", init)
        except Exception as e:
            problems.append("%s: %s" % (name, e))
            continue
        problem = ("%s failed (exit %s): %s" % (ran, code, headline(out))) if code != 0 else \
            run_check(name, check, init, before, ran, t0, out)
        if problem:
            problems.append("%s: %s" % (name, problem.splitlines()[0]))
    return problems

