"""JSON with ``/* ... */`` comments and repeated keys, as IBM's CPE tools write model files.

:func:`loads` strips comments outside string literals, then parses with an
``object_pairs_hook`` that keeps every value of a repeated key: each object becomes a
``dict[str, list]`` (one list entry per occurrence, in file order).
"""

from __future__ import annotations

import json

from hwq.errors import FileFormatError


def strip_comments(text: str) -> str:
    """``text`` with every ``/* */`` comment outside a string replaced by spaces (offsets and
    line numbers of the JSON errors stay those of the file)."""
    out, k, n, in_str = [], 0, len(text), False
    while k < n:
        ch = text[k]
        if in_str:
            out.append(ch)
            if ch == "\\" and k + 1 < n:
                out.append(text[k + 1])
                k += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif text.startswith("/*", k):
            end = text.find("*/", k + 2)
            if end < 0:
                line = text.count("\n", 0, k) + 1
                raise FileFormatError(f"unterminated /* comment starting on line {line}")
            out.append("".join(c if c == "\n" else " " for c in text[k:end + 2]))
            k = end + 1
        else:
            out.append(ch)
        k += 1
    return "".join(out)


def pairs_hook(pairs):
    obj: dict[str, list] = {}
    for key, value in pairs:
        obj.setdefault(key, []).append(value)
    return obj


def loads(text: str, what: str):
    try:
        return json.loads(strip_comments(text), object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{what}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None


def one(obj: dict, key: str, where: str, default=...):
    """The single value of ``key`` in a hooked object (the last one if repeated)."""
    if not isinstance(obj, dict):
        raise FileFormatError(f"{where}: expected an object")
    if key not in obj:
        if default is ...:
            raise FileFormatError(f"{where}: missing field '{key}'")
        return default
    return obj[key][-1]
