"""Plain data across the sandbox boundary: builtin values to JSON text and back, nothing else. Standard library only.

The sandbox runs this file too (its source is prepended to the runner's, `rewards/sandbox.py`): a program's return
value is converted here *by type* — bool, int, float, complex, str, bytes, None, list, tuple, dict, set, frozenset,
and instances of their subclasses (a `Counter` is sent as the dict it is, a namedtuple as its tuple), and the
standard library's other numbers, Fraction and Decimal — and anything else is refused. The trusted side decodes the
text into fresh objects of those types only, so no method the program defined ever takes part in a comparison. JSON
carries None, bools, ints, floats, strings and lists as themselves; the other types are one-key objects: {"t": [...]}
tuple, {"d": [[k, v], ...]} dict, {"s": [...]} set, {"f": [...]} frozenset, {"b": base64} bytes, {"c": [re, im]}
complex, {"x": non-finite float}, {"i": hex} an int too long for decimal text, {"q": [n, d]} Fraction, {"m": text}
Decimal.

>>> from decimal import Decimal
>>> from fractions import Fraction
>>> value = ({1, 2}, frozenset(), {"k": [b"\\x00", None, -0.0, float("inf"), 2 ** 70, 1j, Fraction(1, 3)]})
>>> decode(encode(value)) == value, decode(encode(Decimal("-0.10"))) == Decimal("-0.10")
(True, True)
>>> from collections import Counter, namedtuple
>>> decode(encode(Counter("aab"))), decode(encode(namedtuple("P", "x y")(1, 2)))
({'a': 2, 'b': 1}, (1, 2))
>>> encode(object())
Traceback (most recent call last):
...
TypeError: a value of type object is not plain data
>>> decode(encode({(2 ** 61 - 1) * i for i in range(100)}))  # all hash to 0: building the set is quadratic
Traceback (most recent call last):
...
ValueError: not plain data: ValueError
"""

import base64
import json
import sys

MAX_DEPTH = 100
MAX_COLLISIONS = 32
MAX_DECIMAL_CHARS = 10_000
_BIG = 1 << 64  # ints at least this large travel as hex: decimal text of a huge int is quadratic (and capped)


def encode(value) -> str:
    """JSON text of a plain value; TypeError for a value of another type, ValueError for one nested too deep."""
    return json.dumps(_to_json(value, 0), ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def decode(text):
    """The value `encode` wrote, built from builtins only; ValueError for anything else (the text is untrusted).
    Whatever it returns can be encoded again inside a list or dict (its depth is below MAX_DEPTH), and no set or
    dict holds more than MAX_COLLISIONS members of equal hash (they would make building it quadratic)."""
    try:
        return _from_json(json.loads(text), 1)
    except (TypeError, ValueError, KeyError, IndexError, RecursionError, OverflowError, MemoryError) as e:
        raise ValueError(f"not plain data: {type(e).__name__}") from None


def _to_json(value, depth):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deep")
    down = depth + 1
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):  # bool is handled above; int subclasses (IntEnum) travel as the int they are
        number = int.__index__(value)
        return number if -_BIG < number < _BIG else {"i": hex(number)}
    if isinstance(value, float):
        number = float.__float__(value)
        return number if number - number == 0 else {"x": repr(number)}  # inf - inf and nan - nan are nan
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return {"b": base64.b64encode(bytes.__bytes__(value)).decode()}
    if isinstance(value, complex):
        number = complex.__complex__(value)
        return {"c": [_to_json(number.real, down), _to_json(number.imag, down)]}
    if isinstance(value, list):
        return [_to_json(v, down) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"t": [_to_json(v, down) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[_to_json(k, down), _to_json(v, down)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"f": [_to_json(v, down) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"s": [_to_json(v, down) for v in set.__iter__(value)]}
    fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")  # loaded if the value is one
    if fractions is not None and isinstance(value, fractions.Fraction):
        return {"q": [_to_json(int(value.numerator), down), _to_json(int(value.denominator), down)]}
    if decimal is not None and isinstance(value, decimal.Decimal):
        return {"m": decimal.Decimal.__str__(value)}
    raise TypeError(f"a value of type {type(value).__name__} is not plain data")


def _from_json(item, depth):
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    down = depth + 1
    kind = type(item)
    if item is None or kind in (bool, int, float, str):
        return item
    if kind is list:
        return [_from_json(v, down) for v in item]
    if kind is not dict or len(item) != 1:
        raise ValueError("unknown form")
    (tag, body), = item.items()
    if tag == "t":
        return tuple(_from_json(v, down) for v in _list(body))
    if tag == "d":
        pairs = [(_from_json(k, down), _from_json(v, down)) for k, v in (_pair(p) for p in _list(body))]
        _spread([k for k, _ in pairs])
        return dict(pairs)
    if tag == "s":
        return set(_spread([_from_json(v, down) for v in _list(body)]))
    if tag == "f":
        return frozenset(_spread([_from_json(v, down) for v in _list(body)]))
    if tag == "b" and type(body) is str:
        return base64.b64decode(body.encode("ascii"), validate=True)
    if tag == "c":
        real, imag = (_from_json(v, down) for v in _pair(body))
        if type(real) is not float or type(imag) is not float:
            raise ValueError("complex parts must be floats")
        return complex(real, imag)
    if tag == "x" and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag == "i" and type(body) is str:
        return int(body, 16)
    if tag == "q":
        numerator, denominator = (_from_json(v, down) for v in _pair(body))
        if type(numerator) is not int or type(denominator) is not int or denominator <= 0:
            raise ValueError("a fraction needs int parts, the denominator positive")
        from fractions import Fraction

        return Fraction(numerator, denominator)
    if tag == "m" and type(body) is str and len(body) <= MAX_DECIMAL_CHARS:
        from decimal import Decimal

        return Decimal(body)
    raise ValueError("unknown tag")


def _spread(members):
    """The members, unless too many share a hash (ints are easy to collide: hash(n) is n mod 2**61 - 1)."""
    counts = {}
    for member in members:
        key = hash(member)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > MAX_COLLISIONS:
            raise ValueError("too many members of equal hash")
    return members


def _list(body):
    if type(body) is not list:
        raise ValueError("expected a list")
    return body


def _pair(body):
    if type(body) is not list or len(body) != 2:
        raise ValueError("expected a pair")
    return body
