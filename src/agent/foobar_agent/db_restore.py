"""`db restore` on the primary. A restore never writes into the live database before
the new data is complete: the tool loads the backup into a scratch database
(binary-logged, so every replica builds the same), then ONE RENAME TABLE statement
moves the restored tables in and the live ones out (all or none, on the primary and,
through the binary log, on each replica). Until that statement, any failure drops the
scratch database: the live one is as it was."""

from .core import AgentError
from .db import run_sql, sql_ident, sql_quote


def any_ident(s):
    """A quoted identifier for a name the server reports (a backup's tables)."""
    s = str(s)
    if not s or len(s) > 64 or "\0" in s or "\n" in s or "\t" in s:
        raise AgentError("request", "invalid SQL name %r" % s)
    return "`%s`" % s.replace("`", "``")


def schema_objects(name):
    """A database's tables (base tables, sequences) and what RENAME TABLE cannot move
    between databases: views, triggers, routines and events (as "view v", ...)."""
    q = sql_quote(name)
    rows = run_sql(
        "SELECT 'table', TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s;\n"
        "SELECT 'trigger', TRIGGER_NAME, '' FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s;\n"
        "SELECT 'routine', ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA=%s;\n"
        "SELECT 'event', EVENT_NAME, '' FROM information_schema.EVENTS WHERE EVENT_SCHEMA=%s;"
        % (q, q, q, q))
    tables, others = [], []
    for r in rows:
        if len(r) < 3:
            continue
        kind, obj, sub = r[0], r[1], r[2]
        if kind == "table" and sub != "VIEW":
            tables.append(obj)
        elif kind == "table":
            others.append("view %s" % obj)
        elif kind == "routine":
            others.append("%s %s" % (sub.lower(), obj))
        else:
            others.append("%s %s" % (kind, obj))
    return sorted(tables), sorted(others)


def restore_names(req):
    names = [req.get(k) for k in ("database", "scratch", "old")]
    for n in names:
        sql_ident(n)
    return names


def op_db_restore_check(req):
    """Read-only, before a restore: the server's version, binary log and GTID position,
    whether it takes writes, the live database's tables and what RENAME TABLE cannot
    move, and databases an earlier restore left behind (NAME__restore_*, NAME__replaced_*)."""
    name = req.get("database")
    sql_ident(name)
    v = run_sql("SELECT VERSION(), @@read_only, @@log_bin, @@gtid_binlog_pos, "
                "(SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME=%s);" % sql_quote(name))
    version, ro, log_bin, gtid, exists = (v[0] + [""] * 5)[:5] if v else [""] * 5
    tables, others = schema_objects(name)
    like = name.replace("_", "\\_")
    left = run_sql("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s OR SCHEMA_NAME LIKE %s;"
                   % (sql_quote(like + "\\_\\_restore\\_%"), sql_quote(like + "\\_\\_replaced\\_%")))
    return {"ok": True, "version": version, "read_only": ro == "1", "log_bin": log_bin == "1",
            "gtid_binlog_pos": gtid, "exists": exists == "1", "tables": tables, "unmovable": others,
            "leftovers": sorted(r[0] for r in left if r)}


def op_db_restore_prepare(req):
    """The empty scratch database the backup loads into (a new name: never an old one)."""
    _, scratch, _ = restore_names(req)
    run_sql("CREATE DATABASE %s CHARACTER SET utf8mb4;" % sql_ident(scratch))
    return {"ok": True}


def op_db_restore_swap(req):
    """The switch, once the backup loaded completely into the scratch database: checks
    that it holds exactly the dump's tables and nothing RENAME TABLE cannot move, then
    one RENAME TABLE moves every live table into `old` and every restored one into the
    database, and both side databases are dropped. A failure before the switch drops the
    scratch database: nothing else changed."""
    name, scratch, old = restore_names(req)
    expected = sorted(str(t) for t in req.get("tables") or [])
    try:
        new, others = schema_objects(scratch)
        if others:
            raise AgentError("db", "the backup holds %s: RENAME TABLE cannot move them between databases, "
                                   "so this restore (tables only) refuses it" % ", ".join(others))
        if new != expected:
            raise AgentError("db", "after loading, the scratch database holds the tables [%s], the dump names [%s]"
                             % (", ".join(new), ", ".join(expected)))
        live, live_others = schema_objects(name)
        if live_others:
            raise AgentError("db", "the database %s holds %s: RENAME TABLE cannot move them, so the restore "
                                   "cannot switch all at once (drop them, or restore by hand)" % (name, ", ".join(live_others)))
        moves = ["%s.%s TO %s.%s" % (sql_ident(name), any_ident(t), sql_ident(old), any_ident(t)) for t in live]
        moves += ["%s.%s TO %s.%s" % (sql_ident(scratch), any_ident(t), sql_ident(name), any_ident(t)) for t in new]
        run_sql("CREATE DATABASE IF NOT EXISTS %s CHARACTER SET utf8mb4;\nCREATE DATABASE %s;\n"
                "SET SESSION lock_wait_timeout=%d;\nRENAME TABLE %s;"
                % (sql_ident(name), sql_ident(old), int(req.get("lock_wait_s", 10)), ",\n  ".join(moves)))
    except AgentError:
        if not swapped(old):
            drop_side_databases(scratch, old)
            raise
    drop_side_databases(scratch, old, keep_old=False)
    counts = {}
    for t in expected:
        rows = run_sql("SELECT COUNT(*) FROM %s.%s;" % (sql_ident(name), any_ident(t)))
        counts[t] = int(rows[0][0]) if rows and rows[0] and rows[0][0].isdigit() else None
    gtid = run_sql("SELECT @@gtid_binlog_pos;")
    return {"ok": True, "rows": counts, "gtid_binlog_pos": gtid[0][0] if gtid and gtid[0] else ""}


def swapped(old):
    """Whether the RENAME TABLE ran (the live tables are in `old`) although the client
    reported an error afterwards."""
    try:
        return bool(schema_objects(old)[0])
    except AgentError:
        return False


def drop_side_databases(scratch, old, keep_old=True):
    """Drops the scratch database, and `old` unless it may hold live tables."""
    stmts = ["DROP DATABASE IF EXISTS %s;" % sql_ident(scratch)]
    if not keep_old or not swapped(old):
        stmts.append("DROP DATABASE IF EXISTS %s;" % sql_ident(old))
    run_sql("\n".join(stmts))


def op_db_restore_abort(req):
    """A load that failed: the scratch database goes (the live one was never touched)."""
    _, scratch, old = restore_names(req)
    drop_side_databases(scratch, old)
    return {"ok": True}
