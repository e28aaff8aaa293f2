"""Files on the host: hashes, what observe reports of a file, JSON written atomically,
copies that keep mode, owner and times, and removal. Without shutil (it imports re)."""

import grp
import json
import os
import pwd
import stat

from .core import b64encode, hashlib, now


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def live_sha(path):
    """sha256 of the file's bytes (following a symlink); None if absent or not a regular file."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "(not a regular file)"
        return sha256_file(path)
    except FileNotFoundError:
        return "(dangling symlink)" if os.path.islink(path) else None


# Names already looked up for this request: an observe asks for the same few ids for
# every file (the first lookup reads /etc/passwd or /etc/group).
_NAMES = {}


def forget_names():
    """Before each request (ops.py): a user renamed between two runs of a kept agent."""
    _NAMES.clear()


def _name(db, id_):
    key = (db, id_)
    if key not in _NAMES:
        try:
            _NAMES[key] = (pwd.getpwuid(id_).pw_name if db == "user" else grp.getgrgid(id_).gr_name)
        except KeyError:
            _NAMES[key] = str(id_)
    return _NAMES[key]


def user_name(uid):
    return _name("user", uid)


def group_name(gid):
    return _name("group", gid)


def file_info(path, desired=None, max_content=0, want_content=False):
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    info = {"exists": True}
    st = lst
    if stat.S_ISLNK(lst.st_mode):
        info["link"] = os.readlink(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            info["dangling"] = True
            return info
    info.update(mode="%04o" % stat.S_IMODE(st.st_mode), owner=user_name(st.st_uid),
                group=group_name(st.st_gid), size=st.st_size)
    if not stat.S_ISREG(st.st_mode):
        info.update(sha256=None, type="directory" if stat.S_ISDIR(st.st_mode) else "other")
        return info
    with open(path, "rb") as f:
        data = f.read(max_content + 1) if want_content else b""
        h = hashlib.sha256(data)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    info["sha256"] = h.hexdigest()
    if want_content and info["sha256"] != desired:
        if len(data) <= max_content:
            info["content_b64"] = b64encode(data)
        else:
            info["content_too_large"] = True
    return info


def read_json(path, default=None):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def json_lines(obj):
    """JSON of obj, a list one element per line (readable, and no `json` import)."""
    if isinstance(obj, list) and obj:
        return "[\n" + ",\n".join(json.dumps(e, sort_keys=True) for e in obj) + "\n]"
    return json.dumps(obj, sort_keys=True)


def write_json_atomic(path, obj, mode=0o600):
    d = os.path.dirname(path)
    tmp = os.path.join(d, ".tmp-%d-%d" % (os.getpid(), int(now() * 1e6)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json_lines(obj))
            f.write("\n")
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def copy_preserving(src, dst):
    """Copy src to dst (a symlink stays a symlink) with mode and ownership."""
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    if os.path.lexists(dst):
        os.unlink(dst)
    st = os.lstat(src)
    copy_file(src, dst, st)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def copy_file(src, dst, st=None):
    """Copy src's bytes (or, for a symlink, the link) to a new dst with src's mode and
    times, as shutil.copy2(follow_symlinks=False) does (shutil imports re via fnmatch)."""
    st = st or os.lstat(src)
    if os.path.lexists(dst):
        os.unlink(dst)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return
    fd_in = os.open(src, os.O_RDONLY)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while os.sendfile(fd_out, fd_in, None, 1 << 30):
                pass
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def restore_file(backup, target, tag):
    """Put a backed-up file back over target atomically (copy beside it, then rename)."""
    tmp = "%s.foobar-restore-%s" % (target, tag)
    copy_preserving(backup, tmp)
    os.replace(tmp, target)


def remove_quiet(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            for root, dirs, files in os.walk(path, topdown=False):  # shutil would import re
                for f in files:
                    os.unlink(os.path.join(root, f))
                for d in dirs:
                    sub = os.path.join(root, d)
                    os.unlink(sub) if os.path.islink(sub) else os.rmdir(sub)
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass

