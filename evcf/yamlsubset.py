"""A reader for the part of YAML that params.yaml is written in, for machines without PyYAML.

``scripts/gpu_check.sh`` runs ``evcf bench --params params.yaml`` on a GPU machine that has Python
and torch only.  Where PyYAML is installed it reads the file (:func:`evcf.bench.load_params_checked`);
where it is not, :func:`load` does, and gives what ``yaml.safe_load`` gives for this subset
(tests/test_yamlsubset.py compares the two on params.yaml itself):

* block mappings (``key: value``, ``key:`` and a more indented block), block sequences
  (``- value``, ``-`` and a more indented block), ``#`` comments;
* flow sequences and mappings on one line (``[0.2, 0.5]``, ``{epochs: 100}``, nested);
* single- and double-quoted scalars on one line (double-quoted: the escapes ``\\\\ \\" \\n \\t``);
* plain scalars resolved as YAML 1.1 (PyYAML) does: null (``~``, ``null``, nothing), booleans
  (``true``, ``false``, ``yes``, ``no``, ``on``, ``off`` in three cases), decimal integers, floats
  with a dot (``2.0e-5``; ``2e-5`` is a string, as PyYAML reads it), ``.inf``, ``.nan``; else strings.

Everything else is refused with an :class:`~evcf.errors.EvcfError` naming the line, never read
differently: anchors, aliases, tags, merge keys, block scalars (``|``, ``>``), multi-line scalars and
flow collections, documents markers and directives, tabs in indentation, duplicate keys, and the
plain scalars that YAML 1.1 reads as something else than a decimal number (``0x1f``, ``0o17``,
``1_000``, ``1:30``, dates).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .errors import EvcfError

__all__ = ["load", "load_file"]

_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?")
_INF = re.compile(r"([-+]?)\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
# plain scalars that YAML 1.1 resolves to a number, a date or a special key in a way not read here
_REFUSED = re.compile(
    r"[-+]?0b[01_]+|[-+]?0[0-7_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?0o[0-7_]+"  # binary, octal, hexadecimal
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?"  # sexagesimal
    r"|[-+]?[0-9_]*_[0-9_]*(?:\.[0-9_]*)?(?:[eE][-+][0-9]+)?|[-+]?[0-9_]*\.[0-9_]*_[0-9_]*(?:[eE][-+][0-9]+)?"  # 1_000
    r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt ].*)?"  # dates and timestamps
    r"|<<|=")
_INDICATORS = "&*!|>%@`"  # anchors, aliases, tags, block scalars, directives, reserved


class _Line:
    __slots__ = ("number", "indent", "text")

    def __init__(self, number: int, indent: int, text: str):
        self.number, self.indent, self.text = number, indent, text


class _Reader:
    def __init__(self, text: str, source: str):
        self.source = source
        self.lines: list[_Line] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            body = self._strip_comment(raw, number).rstrip()
            if not body.strip():
                continue
            stripped = body.lstrip(" ")
            if stripped.startswith("\t"):
                self.fail(number, "a tab in the indentation", "indent with spaces")
            if stripped.startswith(("---", "...")) or stripped.startswith("%"):
                self.fail(number, "document markers and directives are not read here", "remove them")
            self.lines.append(_Line(number, len(body) - len(stripped), stripped))

    def fail(self, number: int, problem: str, fix: str = "write it as params.yaml does, or install PyYAML") -> None:
        raise EvcfError(f"line {number}: {problem} (evcf's YAML reader, PyYAML absent)", path=self.source, fix=fix)

    def _strip_comment(self, raw: str, number: int) -> str:
        """The line without its comment: a ``#`` at the start or after a space, outside quotes."""
        quote = None
        for i, ch in enumerate(raw):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"" and (i == 0 or raw[i - 1] in " \t[{,:-"):
                quote = ch
            elif ch == "#" and (i == 0 or raw[i - 1] in " \t"):
                return raw[:i]
        return raw

    # --- blocks ----------------------------------------------------------------------------------
    def document(self) -> Any:
        if not self.lines:
            return None
        value, end = self.block(0, self.lines[0].indent)
        if end < len(self.lines):
            self.fail(self.lines[end].number, "unexpected indentation")
        return value

    def block(self, i: int, indent: int) -> tuple[Any, int]:
        if self.lines[i].indent != indent:
            self.fail(self.lines[i].number, "unexpected indentation")
        if self._is_item(self.lines[i].text):
            return self.sequence(i, indent)
        if self._split_key(self.lines[i]) is None:  # a lone scalar or flow collection
            if i + 1 < len(self.lines) and self.lines[i + 1].indent >= indent:
                self.fail(self.lines[i + 1].number, "a scalar continued on the next line",
                          "write each value on one line")
            return self.inline(self.lines[i].text, self.lines[i].number), i + 1
        return self.mapping(i, indent)

    @staticmethod
    def _is_item(text: str) -> bool:
        return text == "-" or text.startswith("- ")

    def _split_key(self, line: _Line) -> tuple[str, str] | None:
        """(key, rest) of ``key: rest`` or ``key:``; None when the line holds no mapping key."""
        text = line.text
        if text[0] in "[{":
            return None
        if text[0] in "'\"":  # a quoted key: its closing quote, then the colon
            close = self._quoted_end(text, 0, line.number)
            rest = text[close:]
            if not (rest == ":" or rest.startswith(": ")):
                return None
            return text[:close], rest[1:].strip()
        match = re.search(r":(?: |$)", text)
        if match is None:
            return None
        return text[:match.start()].strip(), text[match.end():].strip()

    def mapping(self, i: int, indent: int) -> tuple[dict, int]:
        out: dict[Any, Any] = {}
        while i < len(self.lines) and self.lines[i].indent == indent:
            line = self.lines[i]
            if self._is_item(line.text):
                self.fail(line.number, "a sequence item among mapping keys")
            split = self._split_key(line)
            if split is None:
                self.fail(line.number, "expected `key: value`")
            key_text, rest = split
            key = self.inline(key_text, line.number)
            if isinstance(key, (list, dict)):
                self.fail(line.number, "a collection as a mapping key")
            if key in out:
                self.fail(line.number, f"duplicate key {key_text!r}", "keep one of them")
            i += 1
            if rest:
                out[key] = self.inline(rest, line.number)
            elif i < len(self.lines) and self.lines[i].indent > indent:
                out[key], i = self.block(i, self.lines[i].indent)
            elif i < len(self.lines) and self.lines[i].indent == indent and self._is_item(self.lines[i].text):
                out[key], i = self.sequence(i, indent)  # a sequence may sit at its key's indentation
            else:
                out[key] = None
        if i < len(self.lines) and self.lines[i].indent > indent:
            self.fail(self.lines[i].number, "unexpected indentation")
        return out, i

    def sequence(self, i: int, indent: int) -> tuple[list, int]:
        out: list[Any] = []
        while i < len(self.lines) and self.lines[i].indent == indent and self._is_item(self.lines[i].text):
            line = self.lines[i]
            rest = line.text[1:].strip()
            i += 1
            if not rest:
                if i < len(self.lines) and self.lines[i].indent > indent:
                    value, i = self.block(i, self.lines[i].indent)
                else:
                    value = None
            elif self._split_key(_Line(line.number, 0, rest)) is not None:
                self.fail(line.number, "a mapping on a sequence item's line (`- key: value`)",
                          "write the item as `-` and its mapping on the lines below, or as a flow mapping {...}")
            else:
                value = self.inline(rest, line.number)
            out.append(value)
        if i < len(self.lines) and self.lines[i].indent > indent:
            self.fail(self.lines[i].number, "unexpected indentation")
        return out, i

    # --- values on one line ----------------------------------------------------------------------
    def inline(self, text: str, number: int) -> Any:
        value, end = self.flow_value(text, 0, number, in_flow=False)
        if text[end:].strip():
            self.fail(number, f"unexpected text after the value: {text[end:].strip()!r}")
        return value

    def _quoted_end(self, text: str, start: int, number: int) -> int:
        """The index after the closing quote of the quoted scalar at ``start``."""
        quote, i = text[start], start + 1
        while i < len(text):
            if quote == "'" and text[i] == "'":
                if text[i + 1:i + 2] == "'":
                    i += 2
                    continue
                return i + 1
            if quote == '"' and text[i] == "\\":
                i += 2
                continue
            if quote == '"' and text[i] == '"':
                return i + 1
            i += 1
        self.fail(number, "a quoted scalar that does not end on its line", "write it on one line")
        raise AssertionError  # unreachable

    def _unquote(self, body: str, quote: str, number: int) -> str:
        if quote == "'":
            return body.replace("''", "'")
        out, i = [], 0
        escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "/": "/"}
        while i < len(body):
            if body[i] == "\\":
                if body[i + 1:i + 2] not in escapes:
                    self.fail(number, f"the escape \\{body[i + 1:i + 2]} is not read here")
                out.append(escapes[body[i + 1]])
                i += 2
            else:
                out.append(body[i])
                i += 1
        return "".join(out)

    def flow_value(self, text: str, i: int, number: int, *, in_flow: bool) -> tuple[Any, int]:
        while i < len(text) and text[i] == " ":
            i += 1
        if i == len(text):
            return None, i
        ch = text[i]
        if ch == "[":
            return self.flow_sequence(text, i + 1, number)
        if ch == "{":
            return self.flow_mapping(text, i + 1, number)
        if ch in "'\"":
            end = self._quoted_end(text, i, number)
            return self._unquote(text[i + 1:end - 1], ch, number), end
        if ch in _INDICATORS:
            self.fail(number, f"{ch!r} (an anchor, alias, tag, block scalar or directive) is not allowed",
                      "write the value out in full, plainly")
        if in_flow and ch in ",}":  # an empty value in a flow mapping ({key: })
            return None, i
        if ch in "]},":
            self.fail(number, f"unexpected {ch!r}")
        end = i
        while end < len(text):
            c = text[end]
            if in_flow and c in ",[]{}":
                break
            if c == ":" and (end + 1 == len(text) or text[end + 1] == " " or (in_flow and text[end + 1] in ",[]{}")):
                break
            end += 1
        return self.scalar(text[i:end].strip(), number), end

    def _skip(self, text: str, i: int) -> int:
        while i < len(text) and text[i] == " ":
            i += 1
        return i

    def flow_sequence(self, text: str, i: int, number: int) -> tuple[list, int]:
        out: list[Any] = []
        while True:
            i = self._skip(text, i)
            if i == len(text):
                self.fail(number, "a flow sequence that does not end on its line", "write it on one line")
            if text[i] == "]":
                return out, i + 1
            if text[i] == ",":
                self.fail(number, "an empty entry in a flow sequence")
            value, i = self.flow_value(text, i, number, in_flow=True)
            i = self._skip(text, i)
            if i < len(text) and text[i] == ":":
                self.fail(number, "a mapping inside a flow sequence", "write it as {key: value}")
            out.append(value)
            if i < len(text) and text[i] == ",":
                i += 1
            elif i < len(text) and text[i] != "]":
                self.fail(number, f"expected ',' or ']' in a flow sequence, got {text[i]!r}")

    def flow_mapping(self, text: str, i: int, number: int) -> tuple[dict, int]:
        out: dict[Any, Any] = {}
        while True:
            i = self._skip(text, i)
            if i == len(text):
                self.fail(number, "a flow mapping that does not end on its line", "write it on one line")
            if text[i] == "}":
                return out, i + 1
            key, i = self.flow_value(text, i, number, in_flow=True)
            if isinstance(key, (list, dict)):
                self.fail(number, "a collection as a mapping key")
            i = self._skip(text, i)
            value = None
            if i < len(text) and text[i] == ":":
                value, i = self.flow_value(text, i + 1, number, in_flow=True)
                i = self._skip(text, i)
            if key in out:
                self.fail(number, f"duplicate key {key!r}", "keep one of them")
            out[key] = value
            if i < len(text) and text[i] == ",":
                i += 1
            elif i < len(text) and text[i] != "}":
                self.fail(number, f"expected ',' or '}}' in a flow mapping, got {text[i]!r}")

    def scalar(self, text: str, number: int) -> Any:
        """A plain scalar, resolved as YAML 1.1 (PyYAML's safe loader) resolves it."""
        if text in _NULL:
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if _INT.fullmatch(text):
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(text)
        inf = _INF.fullmatch(text)
        if inf:
            return -math.inf if inf.group(1) == "-" else math.inf
        if _NAN.fullmatch(text):
            return math.nan
        if _REFUSED.fullmatch(text):
            self.fail(number, f"{text!r} is read by YAML 1.1 as a number, date or merge key in a form not read here",
                      "write a plain decimal number, or quote the string")
        if ": " in text or text.endswith(":"):
            self.fail(number, f"a mapping inside a plain scalar: {text!r}", "quote the string")
        return text


def load(text: str, source: str = "<string>") -> Any:
    """The YAML document ``text`` (params.yaml's subset of YAML, see the module's docstring)."""
    return _Reader(text, source).document()


def load_file(path: str | Path) -> Any:
    """:func:`load` of the file at ``path``."""
    path = Path(path)
    return load(path.read_text(), str(path))
