"""The foobar example application: a small WSGI app run by gunicorn.

    gunicorn --chdir /srv/foobar/current/app foobar_app:application

Configuration: the INI file named by $FOOBAR_APP_CONFIG (default /etc/foobar/app.ini),

    [app]  host_name, release (empty: the name of the release directory this file is in)
    [db]   write_host, write_port, read_host, read_port, name, user, password

The file is re-read when it changes (one stat per request). Writes go to the primary
(`write_*`), reads to the local database (`read_*`: the primary or a replica). A
connection is opened per request with short timeouts, so nothing is stale after a
failover or a database restart. The schema is schema.sql, run on the primary by the
deployment tool: the application never creates tables.

Python 3.9+, stdlib plus PyMySQL (Debian: python3-pymysql), imported only when a
database is used, so the pure parts can be tested without it.
"""

import configparser
import html
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs

CONFIG_ENV = "FOOBAR_APP_CONFIG"
DEFAULT_CONFIG = "/etc/foobar/app.ini"

CONNECT_TIMEOUT = 2  # seconds
READ_TIMEOUT = 5
HEALTH_TIMEOUT = 2  # /health fails if SELECT 1 takes longer than this
ITEMS_LIMIT = 50
TEXT_MAX = 255  # items.text is VARCHAR(255)
BODY_MAX = 64 * 1024


class ConfigError(Exception):
    pass


class DatabaseError(Exception):
    """Any failure to reach or use a database (the cause is chained)."""


# --------------------------------------------------------------------------- config


def release_from_path(path):
    """The release id of the code at `path` (.../releases/ID/app/foobar_app.py -> ID).

    Symlinks are resolved, so code loaded through ROOT/current/app names the release
    `current` pointed to when it was imported."""
    app_dir = os.path.dirname(os.path.realpath(path))
    return os.path.basename(os.path.dirname(app_dir)) or "unknown"


RELEASE_DIR_ID = release_from_path(__file__)


def _clean(value, what):
    """A value that goes into a response header: no control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{what}: control characters are not allowed")
    return value


def parse_config(text, source="app.ini"):
    """Parses the INI text into a flat dict. Raises ConfigError naming the problem."""
    # No interpolation: a password may contain '%'.
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {e}") from None

    def get(section, key, default=None):
        value = cp.get(section, key, fallback=None)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{source}: [{section}] {key} is missing")
            return default
        return value

    def port(section, key):
        value = get(section, key, "3306")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if not 0 < n < 65536:
            raise ConfigError(f"{source}: [{section}] {key}: not a port: {value!r}")
        return n

    return {
        "host_name": _clean(get("app", "host_name", socket.gethostname()), "[app] host_name"),
        "release": _clean(get("app", "release", RELEASE_DIR_ID), "[app] release"),
        "write_host": get("db", "write_host"),
        "write_port": port("db", "write_port"),
        "read_host": get("db", "read_host"),
        "read_port": port("db", "read_port"),
        "name": get("db", "name"),
        "user": get("db", "user"),
        # Not stripped of anything but configparser's surrounding whitespace.
        "password": cp.get("db", "password", fallback=""),
    }


_config_lock = threading.Lock()
_config_cache = {"key": None, "config": None}


def config_path():
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def get_config():
    """The current configuration, re-read when the file changes (checked by stat)."""
    path = config_path()
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
    with _config_lock:
        if _config_cache["key"] != key:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ConfigError(f"{path}: {e.strerror}") from None
            _config_cache["config"] = parse_config(text, path)
            _config_cache["key"] = key
        return _config_cache["config"]


# --------------------------------------------------------------------------- database
# All database access goes through these two functions (tests replace them).


def _connect(cfg, role, timeout):
    import pymysql  # Debian: python3-pymysql

    try:
        return pymysql.connect(
            host=cfg[role + "_host"],
            port=cfg[role + "_port"],
            user=cfg["user"],
            password=cfg["password"],
            database=cfg["name"],
            connect_timeout=min(CONNECT_TIMEOUT, timeout),
            read_timeout=timeout,
            write_timeout=timeout,
            charset="utf8mb4",
            autocommit=True,
        )
    except pymysql.MySQLError as e:
        raise DatabaseError(f"{role} database {cfg[role + '_host']}:{cfg[role + '_port']}: {e}") from e


def db_query(cfg, sql, args=(), timeout=READ_TIMEOUT):
    """Runs a read-only query on the READ connection; returns the rows as dicts."""
    import pymysql

    conn = _connect(cfg, "read", timeout)
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    except pymysql.MySQLError as e:
        raise DatabaseError(f"read database: {e}") from e
    finally:
        conn.close()


def db_insert(cfg, sql, args=(), timeout=READ_TIMEOUT):
    """Runs one INSERT on the WRITE connection (the primary); returns the new row's id."""
    import pymysql

    conn = _connect(cfg, "write", timeout)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.lastrowid
    except pymysql.MySQLError as e:
        raise DatabaseError(f"write database: {e}") from e
    finally:
        conn.close()


# --------------------------------------------------------------------------- handlers
# A handler takes (cfg, environ) and returns (status, content_type, body, extra_headers).


def _json(status, obj):
    return status, "application/json", json.dumps(obj, separators=(",", ":")) + "\n", []


def _text(status, text):
    return status, "text/plain; charset=utf-8", text + "\n", []


def _log(environ, message):
    # wsgi.errors is gunicorn's error log.
    print(f"foobar_app: {message}", file=environ.get("wsgi.errors") or sys.stderr)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>www.foobar.com</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<main>
<h1>www.foobar.com</h1>
<p>Served by <strong class="host">{host}</strong>, release <code class="release">{release}</code>.</p>
<p>Visits: <span class="visits">{visits}</span></p>
</main>
</body>
</html>
"""


def index(cfg, environ):
    # Each page view is recorded on the primary (best effort, short timeout) and counted
    # on the local database, so the count shows replication at work.
    try:
        db_insert(cfg, "INSERT INTO visits (host) VALUES (%s)", (cfg["host_name"],),
                  timeout=HEALTH_TIMEOUT)
    except DatabaseError as e:
        _log(environ, f"GET /: visit not recorded: {e}")
    try:
        rows = db_query(cfg, "SELECT COUNT(*) AS n FROM visits")
        visits = str(rows[0]["n"])
    except DatabaseError as e:
        _log(environ, f"GET /: {e}")
        visits = "unavailable"
    body = PAGE.format(
        host=html.escape(cfg["host_name"]),
        release=html.escape(cfg["release"]),
        visits=html.escape(visits),
    )
    return "200 OK", "text/html; charset=utf-8", body, [("Cache-Control", "no-store")]


def health(cfg, environ):
    start = time.monotonic()
    try:
        db_query(cfg, "SELECT 1 AS ok", timeout=HEALTH_TIMEOUT)
    except DatabaseError as e:
        _log(environ, f"health: {e}")
        return _text("503 Service Unavailable", "database unavailable")
    if time.monotonic() - start > HEALTH_TIMEOUT:
        return _text("503 Service Unavailable", "database too slow")
    return _text("200 OK", f"ok {cfg['host_name']} {cfg['release']}")


def _form(environ):
    """The request's form fields (application/x-www-form-urlencoded), or an error tuple."""
    ctype = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        return None, _json("415 Unsupported Media Type",
                           {"error": "send application/x-www-form-urlencoded"})
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > BODY_MAX:
        return None, _json("413 Payload Too Large", {"error": "request body too large"})
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, _json("400 Bad Request", {"error": "the body is not UTF-8"})
    return parse_qs(text, keep_blank_values=True), None


def items_create(cfg, environ):
    form, err = _form(environ)
    if err:
        return err
    text = (form.get("text") or [""])[0]
    if not text.strip():
        return _json("400 Bad Request", {"error": "form field 'text' is required"})
    if len(text) > TEXT_MAX:
        return _json("400 Bad Request", {"error": f"'text' is longer than {TEXT_MAX} characters"})
    try:
        new_id = db_insert(cfg, "INSERT INTO items (text, host) VALUES (%s, %s)",
                           (text, cfg["host_name"]))
    except DatabaseError as e:
        _log(environ, f"POST /items: {e}")
        return _json("503 Service Unavailable", {"error": "database unavailable"})
    status, ctype, body, headers = _json("201 Created", {"id": new_id, "host": cfg["host_name"]})
    return status, ctype, body, headers + [("Location", f"/items/{new_id}")]


def _item(row):
    created = row.get("created")
    return {
        "id": row["id"],
        "text": row["text"],
        "host": row["host"],
        "created": created.isoformat(sep=" ") if hasattr(created, "isoformat") else created,
    }


def items_list(cfg, environ):
    try:
        rows = db_query(cfg, "SELECT id, text, host, created FROM items ORDER BY id DESC LIMIT %s",
                        (ITEMS_LIMIT,))
    except DatabaseError as e:
        _log(environ, f"GET /items: {e}")
        return _json("503 Service Unavailable", {"error": "database unavailable"})
    return _json("200 OK", [_item(r) for r in rows])


def items_count(cfg, environ):
    try:
        rows = db_query(cfg, "SELECT COUNT(*) AS n FROM items")
    except DatabaseError as e:
        _log(environ, f"GET /items/count: {e}")
        return _json("503 Service Unavailable", {"error": "database unavailable"})
    return _json("200 OK", {"count": rows[0]["n"]})


ROUTES = {
    "/": {"GET": index},
    "/health": {"GET": health},
    "/items": {"GET": items_list, "POST": items_create},
    "/items/count": {"GET": items_count},
}


def route(path, method):
    """The handler for a request, or (status, allowed methods) when there is none."""
    methods = ROUTES.get(path)
    if methods is None:
        return None, "404 Not Found", None
    handler = methods.get("GET" if method == "HEAD" else method)
    if handler is None:
        return None, "405 Method Not Allowed", ", ".join(sorted(set(methods) | {"HEAD"}))
    return handler, None, None


# --------------------------------------------------------------------------- WSGI


def application(environ, start_response):
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO") or "/"
    try:
        cfg = get_config()
    except ConfigError as e:
        _log(environ, f"configuration: {e}")
        host, release = socket.gethostname(), RELEASE_DIR_ID
        status, ctype, body, headers = _text("500 Internal Server Error", "configuration error")
    else:
        host, release = cfg["host_name"], cfg["release"]
        handler, status, allow = route(path, method)
        if handler is None:
            status, ctype, body, headers = _json(status, {"error": status[4:].lower()})
            if allow:
                headers = [("Allow", allow)]
        else:
            try:
                status, ctype, body, headers = handler(cfg, environ)
            except Exception as e:  # a bug: log it, answer 500 with the usual headers
                _log(environ, f"{method} {path}: {type(e).__name__}: {e}")
                status, ctype, body, headers = _text("500 Internal Server Error", "internal error")
    data = body.encode("utf-8")
    start_response(status, [
        ("Content-Type", ctype),
        ("Content-Length", str(len(data))),
        ("X-Served-By", host),
        ("X-Release", release),
    ] + headers)
    return [b""] if method == "HEAD" else [data]
