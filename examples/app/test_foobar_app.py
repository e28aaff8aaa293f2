"""Tests of the pure parts of the example application (no database, no PyMySQL needed).

    cd examples/app && python3 -m unittest
"""

import datetime
import io
import json
import os
import sys
import tempfile
import unittest
from urllib.parse import urlencode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "app"))

import foobar_app  # noqa: E402

INI = """\
# a comment
[app]
host_name = web-02
release = {release}

[db]
write_host = 10.0.0.11
write_port = 3306
read_host = 127.0.0.1
read_port = 3307
name = foobar
user = foobar
password = p%w;d #x
"""


def call(method, path, body=b"", content_type="application/x-www-form-urlencoded"):
    """Runs one request through the WSGI callable; returns (status, headers, body)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_TYPE": content_type if body else "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
    }
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    out = b"".join(foobar_app.application(environ, start_response))
    return seen["status"], seen["headers"], out.decode("utf-8")


class ConfigTest(unittest.TestCase):
    def test_parse(self):
        cfg = foobar_app.parse_config(INI.format(release="r7"))
        self.assertEqual(cfg["host_name"], "web-02")
        self.assertEqual(cfg["release"], "r7")
        self.assertEqual((cfg["write_host"], cfg["write_port"]), ("10.0.0.11", 3306))
        self.assertEqual((cfg["read_host"], cfg["read_port"]), ("127.0.0.1", 3307))
        self.assertEqual(cfg["password"], "p%w;d #x")  # no interpolation, no inline comments

    def test_empty_release_is_the_directory_name(self):
        cfg = foobar_app.parse_config(INI.format(release=""))
        self.assertEqual(cfg["release"], foobar_app.RELEASE_DIR_ID)

    def test_missing_key(self):
        with self.assertRaisesRegex(foobar_app.ConfigError, r"\[db\] write_host is missing"):
            foobar_app.parse_config(INI.format(release="").replace("write_host = 10.0.0.11\n", ""))

    def test_bad_port(self):
        with self.assertRaisesRegex(foobar_app.ConfigError, "read_port: not a port"):
            foobar_app.parse_config(INI.format(release="").replace("3307", "x"))

    def test_release_from_path(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "releases", "20240101-1", "app"))
            os.symlink("releases/20240101-1", os.path.join(d, "current"))
            path = os.path.join(d, "current", "app", "foobar_app.py")
            self.assertEqual(foobar_app.release_from_path(path), "20240101-1")


class AppTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.ini = os.path.join(self.dir.name, "app.ini")
        with open(self.ini, "w") as f:
            f.write(INI.format(release="r7"))
        self.env = os.environ.get(foobar_app.CONFIG_ENV)
        os.environ[foobar_app.CONFIG_ENV] = self.ini
        self.queries, self.inserts = [], []
        self.rows = {}
        self.down = False

        def db_query(cfg, sql, args=(), timeout=foobar_app.READ_TIMEOUT):
            if self.down:
                raise foobar_app.DatabaseError("read database: refused")
            self.queries.append((cfg["read_host"], sql, args, timeout))
            for key, rows in self.rows.items():
                if key in sql:
                    return rows
            return [{"n": 0}]

        def db_insert(cfg, sql, args=(), timeout=foobar_app.READ_TIMEOUT):
            if self.down:
                raise foobar_app.DatabaseError("write database: refused")
            self.inserts.append((cfg["write_host"], sql, args))
            return 42

        self.saved = foobar_app.db_query, foobar_app.db_insert
        foobar_app.db_query, foobar_app.db_insert = db_query, db_insert

    def tearDown(self):
        foobar_app.db_query, foobar_app.db_insert = self.saved
        if self.env is None:
            os.environ.pop(foobar_app.CONFIG_ENV, None)
        else:
            os.environ[foobar_app.CONFIG_ENV] = self.env
        self.dir.cleanup()

    def assertServedBy(self, headers):
        self.assertEqual(headers["X-Served-By"], "web-02")
        self.assertEqual(headers["X-Release"], "r7")

    def test_index(self):
        self.rows["FROM visits"] = [{"n": 12}]
        status, headers, body = call("GET", "/")
        self.assertEqual(status, "200 OK")
        self.assertTrue(headers["Content-Type"].startswith("text/html"))
        self.assertServedBy(headers)
        self.assertIn("web-02", body)
        self.assertIn("r7", body)
        self.assertIn(">12<", body)
        self.assertEqual(self.inserts[0][0], "10.0.0.11")  # the visit goes to the primary
        self.assertEqual(self.queries[0][0], "127.0.0.1")  # the count to the local database

    def test_index_without_database(self):
        self.down = True
        status, headers, body = call("GET", "/")
        self.assertEqual(status, "200 OK")
        self.assertIn("unavailable", body)
        self.assertServedBy(headers)

    def test_health(self):
        status, headers, body = call("GET", "/health")
        self.assertEqual((status, body), ("200 OK", "ok web-02 r7\n"))
        self.assertServedBy(headers)
        self.assertEqual(self.queries[0][3], foobar_app.HEALTH_TIMEOUT)

    def test_health_without_database(self):
        self.down = True
        status, headers, _ = call("GET", "/health")
        self.assertEqual(status, "503 Service Unavailable")
        self.assertServedBy(headers)

    def test_create_item(self):
        status, headers, body = call("POST", "/items", urlencode({"text": "héllo"}).encode())
        self.assertEqual(status, "201 Created")
        self.assertEqual(json.loads(body), {"id": 42, "host": "web-02"})
        self.assertEqual(self.inserts, [("10.0.0.11",
                                         "INSERT INTO items (text, host) VALUES (%s, %s)",
                                         ("héllo", "web-02"))])
        self.assertServedBy(headers)

    def test_create_item_errors(self):
        self.assertEqual(call("POST", "/items")[0], "400 Bad Request")
        self.assertEqual(call("POST", "/items", b"text=" + b"x" * 256)[0], "400 Bad Request")
        self.assertEqual(call("POST", "/items", b"text=x", "application/json")[0],
                         "415 Unsupported Media Type")
        self.down = True
        self.assertEqual(call("POST", "/items", b"text=x")[0], "503 Service Unavailable")
        self.assertEqual(self.inserts, [])

    def test_list_items(self):
        created = datetime.datetime(2024, 5, 1, 12, 0, 0)
        self.rows["FROM items ORDER BY"] = [{"id": 2, "text": "b", "host": "web-01", "created": created}]
        status, headers, body = call("GET", "/items")
        self.assertEqual(status, "200 OK")
        self.assertEqual(json.loads(body), [{"id": 2, "text": "b", "host": "web-01",
                                             "created": "2024-05-01 12:00:00"}])
        self.assertEqual(self.queries[0][2], (50,))
        self.assertServedBy(headers)

    def test_count_items(self):
        self.rows["FROM items"] = [{"n": 7}]
        status, _, body = call("GET", "/items/count")
        self.assertEqual((status, json.loads(body)), ("200 OK", {"count": 7}))

    def test_not_found_and_method(self):
        status, headers, _ = call("GET", "/nope")
        self.assertEqual(status, "404 Not Found")
        self.assertServedBy(headers)
        status, headers, _ = call("DELETE", "/items")
        self.assertEqual(status, "405 Method Not Allowed")
        self.assertEqual(headers["Allow"], "GET, HEAD, POST")

    def test_head_has_no_body(self):
        status, headers, body = call("HEAD", "/health")
        self.assertEqual((status, body), ("200 OK", ""))
        self.assertEqual(headers["Content-Length"], str(len("ok web-02 r7\n")))

    def test_config_is_reread_when_it_changes(self):
        self.assertEqual(call("GET", "/health")[2], "ok web-02 r7\n")
        with open(self.ini, "w") as f:
            f.write(INI.format(release="r8-longer"))
        self.assertEqual(call("GET", "/health")[2], "ok web-02 r8-longer\n")

    def test_bad_config(self):
        with open(self.ini, "w") as f:
            f.write("[app]\nhost_name = x\n")
        status, headers, _ = call("GET", "/health")
        self.assertEqual(status, "500 Internal Server Error")
        self.assertIn("X-Served-By", headers)


if __name__ == "__main__":
    unittest.main()
