"""Every SQL statement the tool runs: reading the database state for observe,
converging the primary (database, users, grants, schema), preparing and starting a
replica, promotion, and repair (a restore's statements are db_restore.py's, over
run_sql from here). SQL (which may carry
password hashes or the replication password) goes to the client on stdin, never argv.
Reads come first and writes happen only when something differs: even idempotent
statements are binlogged and would advance the GTID position."""

import os
import time

from .core import ALNUM, AgentError, Pattern, chars_ok, now, re, tail
from .proc import capture, child_env


SQL_NAME_CHARS = ALNUM | frozenset("_")  # [A-Za-z0-9_]{1,64}
SQL_HOST_CHARS = ALNUM | frozenset("_.:%-")  # [A-Za-z0-9_.:%-]{1,255}
HASH_RE = Pattern(r"^\*[0-9A-F]{40}$")


def sql_name_ok(s):
    return chars_ok(str(s), SQL_NAME_CHARS, 64)


def sql_host_ok(s):
    return chars_ok(str(s), SQL_HOST_CHARS, 255)


def sql_client():
    dirs = child_env()["PATH"].split(":")
    for c in ("mariadb", "mysql"):
        if any(os.access(os.path.join(d, c), os.X_OK) for d in dirs if d):
            return c
    raise AgentError("db", "no mariadb/mysql client on this host")


def sql_quote(s):
    return "'" + str(s).replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_ident(s):
    if not sql_name_ok(s):
        raise AgentError("request", "invalid SQL name %r" % s)
    return "`%s`" % s


def account(u):
    if not sql_name_ok(u.get("user", "")) or not sql_host_ok(u.get("host", "")):
        raise AgentError("request", "invalid account %r" % u)
    return "%s@%s" % (sql_quote(u["user"]), sql_quote(u["host"]))


def run_sql(text, columns=False, timeout=120, extra=()):
    """Run SQL (given on stdin) as root over the local socket. Returns rows as lists,
    or (header, rows) with columns=True. Raises AgentError("db") on failure."""
    argv = [sql_client(), "--batch", "--raw", "--connect-timeout=5"] + list(extra)
    if not columns:
        argv.append("--skip-column-names")
    code, o, e = capture(argv, data=text.encode(), timeout=timeout)
    if code != 0:
        raise AgentError("db", "SQL failed (exit %s): %s" % (code, tail(e.strip(), 2000)))
    lines = [l.split("\t") for l in o.splitlines()]
    if columns:
        return (lines[0] if lines else []), lines[1:]
    return lines


def replica_status():
    """SHOW SLAVE STATUS of the default connection as a dict, or None if not configured."""
    header, rows = run_sql("SHOW SLAVE STATUS", columns=True)
    return replica_row(header, rows[0]) if rows else None


def replica_row(header, values):
    """One SHOW SLAVE STATUS row (with its header) as the dict the tool reads."""
    row = dict(zip(header, values))
    behind = row.get("Seconds_Behind_Master")
    return {
        "master_host": row.get("Master_Host"),
        "master_port": int(row.get("Master_Port") or 0),
        "master_user": row.get("Master_User"),
        "io_running": row.get("Slave_IO_Running"),
        "sql_running": row.get("Slave_SQL_Running"),
        "seconds_behind": None if behind in (None, "NULL", "") else int(behind),
        "last_io_error": row.get("Last_IO_Error") or "",
        "last_sql_error": row.get("Last_SQL_Error") or "",
        "last_io_errno": errno_of(row.get("Last_IO_Errno")),
        "last_sql_errno": errno_of(row.get("Last_SQL_Errno")),
        "using_gtid": row.get("Using_Gtid"),
        "gtid_io_pos": row.get("Gtid_IO_Pos"),
    }


def grant_present(grants, want):
    """`want` like "SELECT, INSERT ON `foobar`.*": every privilege listed on that object."""
    privs, _, obj = want.partition(" ON ")
    needed = {p.strip().upper() for p in privs.split(",")}
    for g in grants:  # "GRANT privs ON object TO account...": string operations, no `re`
        head, to, _ = g.partition(" TO ")
        privs_have, on, target = head[len("GRANT "):].rpartition(" ON ")
        if g.startswith("GRANT ") and to and on and target == obj.strip():
            have = {p.strip().upper() for p in privs_have.split(",")}
            if "ALL PRIVILEGES" in have or needed <= have:
                return True
    return False


def db_observe(spec):
    """The database's state for observe, in ONE client call (each mariadb client start
    costs ~13 ms): never writes. Tagged SELECTs, SHOW GRANTS per account and SHOW SLAVE
    STATUS in one batch with --force, so that SHOW GRANTS for a missing account (an
    error) does not stop the rest; the result sets are told apart by their headers."""
    st = {"running": False}
    name = spec.get("database") or ""
    users = spec.get("users") or []
    q = ["SELECT 'vars' AS tag, @@server_id, @@read_only, @@gtid_current_pos, @@gtid_binlog_pos, "
         "@@gtid_slave_pos, @@datadir;",
         "SELECT 'db' AS tag, COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME=%s;" % sql_quote(name),
         "SELECT 'table' AS tag, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s;" % sql_quote(name)]
    for i, u in enumerate(users):
        q.append("SELECT 'user' AS tag, %d, authentication_string FROM mysql.user WHERE User=%s AND Host=%s;"
                 % (i, sql_quote(u["user"]), sql_quote(u["host"])))
        q.append("SELECT 'grants' AS tag, %d;" % i)
        q.append("SHOW GRANTS FOR %s;" % account(u))
    q.append("SHOW SLAVE STATUS;")
    try:
        code, out, err = 0, native_batch(q), ""
    except (OSError, ValueError, IndexError):  # not a server this client speaks to: the real one
        argv = [sql_client(), "--batch", "--raw", "--force", "--connect-timeout=5"]
        code, out, err = capture(argv, data="\n".join(q).encode())
    found, grants, tables, datadir = {}, {}, set(), None
    lines = out.splitlines()
    current = None  # the account whose SHOW GRANTS rows follow
    i = 0
    while i < len(lines):
        line = lines[i]
        r = line.split("\t")
        i += 1
        if r[0] == "tag" or line.startswith("Grants for "):
            continue  # a result set's header
        if r[0] == "Slave_IO_State" and i < len(lines):
            st["replica"] = replica_row(r, lines[i].split("\t"))
            i += 1
        elif r[0] == "vars" and len(r) >= 7:
            st.update(running=True, server_id=int(r[1] or 0), read_only=r[2] == "1",
                      gtid_current_pos=r[3], gtid_binlog_pos=r[4], gtid_slave_pos=r[5])
            datadir = r[6]
        elif r[0] == "db" and len(r) >= 2:
            st["database_exists"] = r[1] == "1"
        elif r[0] == "table" and len(r) >= 2:
            tables.add(r[1])
        elif r[0] == "user" and len(r) >= 3:
            found[int(r[1])] = r[2]
        elif r[0] == "grants" and len(r) == 2 and r[1].isdigit():
            current = int(r[1])
            grants[current] = []
        elif current is not None and line.startswith("GRANT "):
            grants[current].append(line)
    if not st["running"]:
        st["error"] = "SQL failed (exit %s): %s" % (code, tail(err.strip(), 2000))
        return st
    st["missing_tables"] = [t for t in spec.get("tables") or [] if t not in tables]
    st["users"] = [{"user": u["user"], "host": u["host"], "exists": i in found,
                    "password_ok": found.get(i) == u.get("hash"),
                    "grants_ok": i in found and all(grant_present(grants.get(i, []), g) for g in u.get("grants") or [])}
                   for i, u in enumerate(users)]
    st.setdefault("replica", None)
    repl = spec.get("replication")
    if st["replica"] and isinstance(repl, dict):
        st["replica_password_ok"] = replica_password_hash(datadir) == repl.get("hash")
    return st


MYSQL_SOCKET = "/run/mysqld/mysqld.sock"


def native_batch(statements, path=MYSQL_SOCKET, timeout=5.0):
    """Read-only statements over the server's Unix socket as root (unix_socket
    authentication), printed as `mariadb --batch --raw --force` prints them: per result
    set with rows, a header line and one line per row (tab-separated, NULL as "NULL");
    a failing statement prints nothing and the next one runs. The observe path's SQL
    client: starting `mariadb` costs ~15-20 ms of a ~40 ms observe. Raises OSError or
    ValueError when the server or its authentication is not what this speaks (then the
    caller runs the real client)."""
    import _socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    buf = bytearray()

    def read_packet():
        while True:
            if len(buf) >= 4:
                n = buf[0] | buf[1] << 8 | buf[2] << 16
                if n == 0xFFFFFF:
                    raise ValueError("multi-packet answers are not read here")
                if len(buf) >= 4 + n:
                    seq, payload = buf[3], bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    return seq, payload
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("the server closed the connection")
            buf.extend(chunk)

    def send(seq, payload):
        s.sendall(len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload)

    def lenenc(p, i):
        """(value, next index) of a length-encoded integer; value None for NULL (0xFB)."""
        c = p[i]
        if c < 0xFB:
            return c, i + 1
        if c == 0xFB:
            return None, i + 1
        size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(c)
        if size is None:
            raise ValueError("bad length byte")
        return int.from_bytes(p[i + 1:i + 1 + size], "little"), i + 1 + size

    def strings(p, count):
        out, i = [], 0
        for _ in range(count):
            n, i = lenenc(p, i)
            if n is None:
                out.append("NULL")
            else:
                out.append(p[i:i + n].decode("utf-8", "replace"))
                i += n
        return out

    try:
        s.connect(path)
        seq, hello = read_packet()
        if hello[0] != 10:
            raise ValueError("not protocol 10")
        # capabilities: LONG_PASSWORD, LONG_FLAG, PROTOCOL_41, TRANSACTIONS,
        # SECURE_CONNECTION, PLUGIN_AUTH; utf8mb4; user root; empty auth response.
        caps = 0x1 | 0x4 | 0x200 | 0x2000 | 0x8000 | 0x80000
        plugin = hello[hello.rindex(b"\0", 0, len(hello) - 1) + 1:].rstrip(b"\0") \
            if hello.endswith(b"\0") else b"mysql_native_password"
        send(seq + 1, caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + bytes([45])
             + bytes(23) + b"root\0" + b"\0" + plugin + b"\0")
        while True:
            seq, p = read_packet()
            if p[0] == 0x00:
                break
            if p[0] == 0xFE and p[1:].split(b"\0", 1)[0] == b"unix_socket":
                send(seq + 1, b"")  # unix_socket: the server checks our peer credentials
                continue
            raise ValueError("authentication as root over the socket refused")
        out = []
        for stmt in statements:
            send(0, b"\x03" + stmt.rstrip().rstrip(";").encode("utf-8"))
            _, p = read_packet()
            if p[0] in (0x00, 0xFF):
                continue  # no result set, or an error (skipped, as --force does)
            ncols, _ = lenenc(p, 0)
            names = []
            for _ in range(ncols):
                _, col = read_packet()
                names.append(strings(col, 5)[4])  # catalog, schema, table, org_table, name
            _, p = read_packet()  # EOF after the column definitions
            rows = []
            while True:
                _, p = read_packet()
                if p[0] == 0xFE and len(p) < 9:
                    break
                if p[0] == 0xFF:  # failed after its column definitions (SHOW GRANTS does)
                    rows = []
                    break
                rows.append("\t".join(strings(p, ncols)))
            if rows:
                out.append("\t".join(names))
                out.extend(rows)
        try:
            send(0, b"\x01")  # COM_QUIT: the server logs no aborted connection
        except OSError:
            pass
        return "\n".join(out) + "\n"
    finally:
        s.close()


def native_hash(password):
    """mysql_native_password's stored form: '*' + upper hex of SHA1(SHA1(password))."""
    import hashlib
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def replica_password_hash(datadir):
    """The hash of the password this replica logs in to its primary with (master.info in
    the datadir, root-only), so that a rotated replication secret shows as a change.
    None if unreadable."""
    try:
        path = os.path.join(datadir or "", "master.info")
        with open(path) as f:
            lines = f.read().split("\n")
        return native_hash(lines[5]) if len(lines) > 5 else None
    except (AgentError, OSError, IndexError):
        return None


def op_db_replica_password(req):
    """A rotated replication secret: the replica logs in with the new password from its
    next connection on. Replication stops for a moment; the position (GTID) is kept. The
    password arrives on stdin and goes to the SQL client on its stdin."""
    pw = req.get("password")
    if not isinstance(pw, str):
        raise AgentError("request", "invalid replication password")
    # MariaDB refuses CHANGE MASTER while either thread runs; by GTID the position is kept.
    run_sql("STOP SLAVE;\nCHANGE MASTER TO MASTER_PASSWORD=%s;\nSTART SLAVE;" % sql_quote(pw))
    return op_db_wait_replica({"timeout_s": req.get("timeout_s", 30)})


def user_statements(users, observed=None):
    """CREATE/ALTER USER and GRANT statements for what differs (all, when observed is None)."""
    seen = {(u["user"], u["host"]): u for u in (observed or [])}
    out = []
    for u in users:
        if not HASH_RE.match(str(u.get("hash", ""))):
            raise AgentError("request", "invalid password hash for %s" % u.get("user"))
        o = seen.get((u["user"], u["host"]))
        # IDENTIFIED BY PASSWORD '<hash>' keeps the clear password out of the binary log.
        if observed is None or not o or not o["exists"]:
            out.append("CREATE USER %s IDENTIFIED BY PASSWORD %s;" % (account(u), sql_quote(u["hash"])))
        elif not o["password_ok"]:
            out.append("ALTER USER %s IDENTIFIED BY PASSWORD %s;" % (account(u), sql_quote(u["hash"])))
        if observed is None or not o or not o["exists"] or not o["grants_ok"]:
            for g in u.get("grants") or []:
                privs, _, obj = g.partition(" ON ")
                out.append("GRANT %s ON %s TO %s;" % (privs, obj, account(u)))
    return out


def op_db_primary(req):
    """Converge the primary: database, schema tables, users and grants. Writes only
    what differs; answers what it did."""
    spec = req.get("db") or {}
    st = db_observe(spec)
    if not st["running"]:
        raise AgentError("db", "the database server is not running: %s" % st.get("error", ""))
    if st["read_only"]:
        raise AgentError("db", "this server is read-only: it is not a primary (refusing to write)")
    stmts = []
    name = spec.get("database")
    if name and not st.get("database_exists"):
        stmts.append("CREATE DATABASE %s CHARACTER SET utf8mb4;" % sql_ident(name))
    stmts += user_statements(spec.get("users") or [], st["users"])
    done = list(stmts)
    if stmts:
        run_sql("\n".join(stmts))
    schema = spec.get("schema")
    if schema and st.get("missing_tables"):
        run_sql(schema, extra=["--database=%s" % name])
        done.append("schema: created %s" % ", ".join(st["missing_tables"]))
    masked = [re.sub(r"PASSWORD '\*[0-9A-F]{40}'", "PASSWORD '***'", s) for s in done]
    gtid = run_sql("SELECT @@GLOBAL.gtid_binlog_pos")
    return {"ok": True, "done": masked, "state": db_observe(spec), "gtid": gtid[0][0] if gtid and gtid[0] else ""}


def op_db_seed_prepare(req):
    """Make a replica ready for a fresh copy of the primary: stop and forget replication,
    clear its own binary log, drop the application database, and create the tool's users
    locally without binary logging (they predate the dump's GTID position)."""
    spec = req.get("db") or {}
    name = sql_ident(spec.get("database"))
    stmts = ["STOP SLAVE;", "RESET SLAVE ALL;", "RESET MASTER;", "SET sql_log_bin=0;",
             "DROP DATABASE IF EXISTS %s;" % name]
    users = spec.get("users") or []
    for u in users:
        stmts.append("DROP USER IF EXISTS %s;" % account(u))
    stmts += user_statements(users)
    run_sql("\n".join(stmts))
    return {"ok": True}


def op_db_replica_start(req):
    """Point the replica at the primary by GTID, start it, and wait (bounded) until both
    threads run. current_pos, not slave_pos: a demoted primary's own transactions are in
    its binary log, not in its slave position (a seeded replica has no binary log of its
    own, so both are the same there). The replication password arrives here, on stdin, and goes to the SQL
    client on its stdin."""
    p = req.get("primary") or {}
    host, port, user, pw = p.get("host"), int(p.get("port", 3306)), p.get("user"), p.get("password")
    if not sql_host_ok(host) or not sql_name_ok(user) or not isinstance(pw, str):
        raise AgentError("request", "invalid primary for replication")
    run_sql("STOP SLAVE;\nCHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%d, MASTER_USER=%s, "
            "MASTER_PASSWORD=%s, MASTER_USE_GTID=current_pos, MASTER_CONNECT_RETRY=5;\nSTART SLAVE;"
            % (sql_quote(host), port, sql_quote(user), sql_quote(pw)))
    deadline = now() + float(req.get("timeout_s", 30))
    while True:
        rs = replica_status()
        if rs and rs["io_running"] == "Yes" and rs["sql_running"] == "Yes":
            return {"ok": True, "replica": rs}
        if now() >= deadline:
            raise AgentError("db", "replication did not start within %ss: IO %s, SQL %s %s %s"
                             % (req.get("timeout_s", 30), rs and rs["io_running"], rs and rs["sql_running"],
                                rs and rs["last_io_error"], rs and rs["last_sql_error"]))
        time.sleep(0.3)


def op_db_replica_remove(req):
    """A replica leaves the stack: replication stopped and forgotten, so that the server
    never replicates again if someone starts it later (its data stays)."""
    run_sql("STOP SLAVE;\nRESET SLAVE ALL;")
    return {"ok": True, "replica": replica_status()}


def op_db_wait_replica(req):
    """Wait (bounded) until replication runs again, e.g. after a restart."""
    deadline = now() + float(req.get("timeout_s", 60))
    while True:
        try:
            rs = replica_status()
        except AgentError:
            rs = None
        if rs and rs["io_running"] == "Yes" and rs["sql_running"] == "Yes":
            return {"ok": True, "replica": rs}
        if now() >= deadline:
            raise AgentError("db", "replication is not running after %ss: %s" % (req.get("timeout_s", 60), rs))
        time.sleep(0.3)


def op_db_fence(req):
    """Make this server read-only (the old primary, before a promotion) and answer its
    binary log position, for the new primary to catch up to."""
    run_sql("SET GLOBAL read_only=ON;")
    rows = run_sql("SELECT @@gtid_binlog_pos")
    return {"ok": True, "gtid_binlog_pos": rows[0][0] if rows and rows[0] else ""}


def op_db_catch_up(req):
    """Wait (bounded) until this replica has applied everything up to a GTID position."""
    gtid = str(req.get("gtid") or "")
    if not re.match(r"^[0-9,\-]*$", gtid):
        raise AgentError("request", "invalid GTID position %r" % gtid)
    timeout = int(req.get("timeout_s", 60))
    rows = run_sql("SELECT MASTER_GTID_WAIT(%s, %d)" % (sql_quote(gtid), timeout), timeout=timeout + 10)
    if not rows or rows[0][0] != "0":
        raise AgentError("db", "did not reach GTID %s within %ss" % (gtid, timeout))
    return {"ok": True}


def op_db_promote(req):
    """This replica becomes the primary: replication stopped and forgotten, writable."""
    run_sql("STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL read_only=OFF;")
    rows = run_sql("SELECT @@read_only, @@gtid_current_pos")
    return {"ok": True, "read_only": rows[0][0] == "1", "gtid_current_pos": rows[0][1]}


# ---------------------------------------------------------------- replica repair
# What the tool decided was safe to put right on a replica (src/database/replica.rs):
# read_only back ON, a replication thread started again, the source re-pointed at the
# same primary by GTID. None of these statements reaches the binary log, and each runs
# only when the state read just before still differs.

def errno_of(v):
    """A Last_*_Errno column as an int (0 for none)."""
    try:
        return int(v or 0)
    except ValueError:
        return 0


def replica_source_stmts(src, rs):
    """STOP/CHANGE MASTER/START for a replica whose source (port, user or GTID mode)
    is not the primary's; none when it already is. The password arrives on stdin and
    goes to the SQL client on its stdin."""
    host, port, user, pw = src.get("host"), int(src.get("port", 3306)), src.get("user"), src.get("password")
    if not sql_host_ok(host) or not sql_name_ok(user) or not isinstance(pw, str):
        raise AgentError("request", "invalid primary for replication")
    if (rs["master_host"], rs["master_port"], rs["master_user"], rs["using_gtid"]) == (host, port, user, "Current_Pos"):
        return []
    return ["STOP SLAVE;",
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%d, MASTER_USER=%s, MASTER_PASSWORD=%s, "
            "MASTER_USE_GTID=current_pos, MASTER_CONNECT_RETRY=5;" % (sql_quote(host), port, sql_quote(user), sql_quote(pw)),
            "START SLAVE;"]


def op_db_replica_repair(req):
    """Put a replica right where that is safe, then wait (bounded) for replication to
    run. `start_io` / `start_sql`: {"errno": N}, the last error the thread stopped with
    when observed; it is started only while that is still so (a thread that stopped on
    another error since is left alone, and the answer shows it). Answers the replica's
    state afterwards; the tool decides what it means."""
    rs = replica_status()
    if rs is None:
        raise AgentError("db", "this server does not replicate (SHOW SLAVE STATUS is empty): nothing to repair")
    rows = run_sql("SELECT @@read_only")
    stmts, done = [], []
    if req.get("read_only") and not (rows and rows[0] and rows[0][0] == "1"):
        stmts.append("SET GLOBAL read_only=ON;")
        done.append("read_only ON")
    src = req.get("source")
    if isinstance(src, dict):
        change = replica_source_stmts(src, rs)
        stmts += change
        if change:
            done.append("replicating from %s:%s as %s by GTID" % (src.get("host"), src.get("port"), src.get("user")))
    threads = []
    for key, thread, running, errno in (("start_io", "IO_THREAD", "io_running", "last_io_errno"),
                                        ("start_sql", "SQL_THREAD", "sql_running", "last_sql_errno")):
        want = req.get(key)
        if isinstance(want, dict) and rs[running] == "No" and not src:
            if rs[errno] == errno_of(want.get("errno")):
                threads.append(thread)
    if threads:
        stmts.append("START SLAVE %s;" % ", ".join(threads))
        done.append("started the %s" % " and ".join(t.split("_")[0] + " thread" for t in threads))
    if stmts:
        run_sql("\n".join(stmts))
    # Wait while a thread is on its way (Connecting, e.g. its primary just restarted);
    # one that runs, or stopped (on an error, or left alone above), ends the wait.
    deadline = now() + float(req.get("timeout_s", 30))
    while True:
        rs = replica_status()
        threads = (rs["io_running"], rs["sql_running"]) if rs else ("No", "No")
        if threads == ("Yes", "Yes") or "No" in threads or now() >= deadline:
            break
        time.sleep(0.3)
    rows = run_sql("SELECT @@read_only")
    return {"ok": True, "done": done, "replica": rs, "read_only": bool(rows and rows[0] and rows[0][0] == "1")}
