"""Every request is checked against its op's shape before the op runs: the shapes are
generated from the tool's request types (src/protocol/*.rs -> shapes.py), so the agent
and the tool read the protocol from one place. A request that does not fit is refused
with kind "request", naming the field and what was wrong; nothing runs."""

from .core import AgentError
from .shapes import REQUEST_SHAPES


def type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


LEAF_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "any": lambda v: True,
}
LEAF_NAMES = {"str": "a string", "int": "an integer", "num": "a number", "bool": "a boolean"}


def object_misfit(v, shape, where):
    if not isinstance(v, dict):
        return "%s: expected an object, got %s" % (where, type_name(v))
    for k in v:
        if k not in shape:
            return "%s: unknown field %r (expected %s)" % (where, k, ", ".join(sorted(shape)) or "none")
    for k, s in shape.items():
        if k not in v:
            if isinstance(s, list) and s[0] == "opt":
                continue
            return "%s: missing field %r" % (where, k)
        bad = misfit(v[k], s, "%s.%s" % (where, k))
        if bad:
            return bad
    return None


def misfit(v, shape, where):
    """None when `v` fits `shape` (src/protocol/shape.rs says what a shape is), else
    what is wrong, naming the field."""
    if isinstance(shape, dict):
        return object_misfit(v, shape, where)
    if isinstance(shape, str):
        if LEAF_CHECKS[shape](v):
            return None
        return "%s: expected %s, got %s" % (where, LEAF_NAMES[shape], type_name(v))
    tag = shape[0]
    if tag == "opt":
        return None if v is None else misfit(v, shape[1], where)
    if tag == "list":
        if not isinstance(v, list):
            return "%s: expected a list, got %s" % (where, type_name(v))
        for i, x in enumerate(v):
            bad = misfit(x, shape[1], "%s[%d]" % (where, i))
            if bad:
                return bad
        return None
    if tag == "map":
        if not isinstance(v, dict):
            return "%s: expected an object, got %s" % (where, type_name(v))
        for k, x in v.items():
            bad = misfit(x, shape[1], "%s[%r]" % (where, k))
            if bad:
                return bad
        return None
    if tag == "enum":
        return None if v in shape[1:] else "%s: expected one of %s, got %r" % (where, ", ".join(shape[1:]), v)
    if tag == "either":
        errors = [misfit(v, s, where) for s in shape[1:]]
        return None if None in errors else errors[0]
    if tag == "tagged":
        field, variants = shape[1], shape[2]
        if not isinstance(v, dict):
            return "%s: expected an object, got %s" % (where, type_name(v))
        if v.get(field) not in variants:
            return "%s.%s: expected one of %s, got %r" % (where, field, ", ".join(sorted(variants)), v.get(field))
        rest = dict((k, x) for k, x in v.items() if k != field)
        return object_misfit(rest, variants[v[field]], where)
    raise AgentError("request", "unknown shape %r" % (tag,))


def check_request(req):
    """Refuse (AgentError "request") a request whose fields do not fit its op's shape."""
    op = req.get("op")
    shape = REQUEST_SHAPES.get(op)
    if shape is None:
        raise AgentError("request", "op %r has no request shape in this agent" % (op,))
    bad = object_misfit(dict((k, v) for k, v in req.items() if k != "op"), shape, op)
    if bad:
        raise AgentError("request", "malformed request: %s" % bad)
