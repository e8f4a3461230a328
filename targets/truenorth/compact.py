"""The compact array syntax of TrueNorth model files ([D], shared/specs/truenorth.md section 2).

An array is a list whose items are integers or strings:

* ``"a:b"``: the integers a, a+1, ..., b (inclusive; counts down when b < a);
* ``"a:s:b"``: a, a+s, a+2s, ... while not past b (``s`` may be negative: ``"22:-1:20"``);
* ``"vxn"``: v repeated n times (``"-32x200"``);
* ``"v"``: one integer.
"""

from __future__ import annotations

import re

from hwq.errors import FileFormatError

INT = r"-?\d+"
REPEAT = re.compile(rf"^({INT})x(\d+)$")
RANGE = re.compile(rf"^({INT}):({INT})$")
STEPPED = re.compile(rf"^({INT}):({INT}):({INT})$")
SINGLE = re.compile(rf"^{INT}$")


def expand_item(item, where: str) -> list[int]:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise FileFormatError(f"{where}: array items must be integers or strings, got {item!r}")
    if isinstance(item, int):
        return [item]
    text = item.strip()
    if m := REPEAT.match(text):
        return [int(m[1])] * int(m[2])
    if m := RANGE.match(text):
        a, b = int(m[1]), int(m[2])
        return list(range(a, b + 1) if b >= a else range(a, b - 1, -1))
    if m := STEPPED.match(text):
        a, s, b = int(m[1]), int(m[2]), int(m[3])
        if s == 0 or (b - a) * s < 0:
            raise FileFormatError(f"{where}: stepped range {text!r} never reaches its end")
        return list(range(a, b + (1 if s > 0 else -1), s))
    if SINGLE.match(text):
        return [int(text)]
    raise FileFormatError(f"{where}: cannot read array item {item!r}",
                          hint="expected an integer, 'a:b', 'a:s:b' or 'vxn'")


def expand(items, where: str, length: int | None = None) -> list[int]:
    """The integers an array in compact syntax stands for; ``length`` is checked if given."""
    if not isinstance(items, list):
        items = [items]
    out: list[int] = []
    for item in items:
        out.extend(expand_item(item, where))
    if length is not None and len(out) != length:
        raise FileFormatError(f"{where}: expected {length} values, the array gives {len(out)}")
    return out


def compress(values) -> list:
    """The shortest-run compact form of ``values`` (inverse of :func:`expand`)."""
    values = [int(v) for v in values]
    out: list = []
    k = 0
    while k < len(values):
        n = run_length(values, k)
        a, step = values[k], (values[k + 1] - values[k]) if n > 1 else 0
        out.append(a if n == 1 else encode_run(a, step, n))
        k += n
    return out


def run_length(values: list[int], k: int) -> int:
    if k + 1 >= len(values):
        return 1
    step, n = values[k + 1] - values[k], 2
    while k + n < len(values) and values[k + n] - values[k + n - 1] == step:
        n += 1
    return n if (n >= 3 or step == 0) else 1


def encode_run(a: int, step: int, n: int) -> str:
    if step == 0:
        return f"{a}x{n}"
    end = a + step * (n - 1)
    return f"{a}:{end}" if step == 1 else f"{a}:{step}:{end}"
