"""The signatures of ``docs/api.md``, rendered from the code.

A signature block in the docs is a ```python block right after
``<!-- signature: DOTTED.PATH -->`` (a function, class or method: ``flowenedet.detector.
FlowEneDet.fit``); it must hold the object's signature as :func:`render` writes it (line
breaks and indentation aside). ``tests/test_docs.py`` checks every one; after changing a
signature, rewrite the blocks with::

    python -m tests.api_signatures --write
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import textwrap
from pathlib import Path

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SIGNATURE = re.compile(
    r"(<!--\s*signature:\s*([\w.]+)\s*-->\s*\n```python[ \t]*\n)(.*?)(^```)", re.S | re.M
)
WIDTH = 92


def resolve(path: str) -> object:
    """The object at dotted ``path``: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ValueError(f"no module in {path!r}")


def _default(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def render(path: str) -> str:
    """``name(params) -> return`` of the object at ``path``, wrapped at :data:`WIDTH`."""
    obj = resolve(path)
    name = path.rsplit(".", 1)[-1]
    if inspect.isclass(obj):
        signature = inspect.signature(obj.__init__)
        params = list(signature.parameters.values())[1:]  # self
        returns = inspect.Signature.empty
    else:
        signature = inspect.signature(obj)
        params = list(signature.parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        returns = signature.return_annotation
    if inspect.ismethod(obj) and isinstance(obj.__self__, type):  # a classmethod
        name = f"{obj.__self__.__name__}.{name}"
    parts, star = [], False
    for p in params:
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star = f"*{p.name}", True
        elif p.kind is p.VAR_KEYWORD:
            text = f"**{p.name}"
        elif p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.annotation is not p.empty:
            text += f": {p.annotation}"
        if p.default is not p.empty:
            text += f" = {_default(p.default)}"
        parts.append(text)
    head = f"{name}("
    tail = ")" + ("" if returns is inspect.Signature.empty else f" -> {returns}")
    one_line = head + ", ".join(parts) + tail
    if len(one_line) <= WIDTH:
        return one_line
    lines, current = [], head
    for i, part in enumerate(parts):
        piece = part + ("," if i < len(parts) - 1 else tail)
        if len(current) + len(piece) + 1 > WIDTH and current.strip() != head.strip():
            lines.append(current.rstrip())
            current = " " * len(head) + piece + " "
        else:
            current += piece + " "
    lines.append(current.rstrip())
    return "\n".join(lines)


def normalised(text: str) -> str:
    """``text`` with its whitespace runs made one space (wrapping does not count)."""
    return " ".join(textwrap.dedent(text).split()).replace("( ", "(").replace(" )", ")")


def blocks(text: str) -> list[tuple[str, str]]:
    """``(dotted path, block text)`` of every signature block of ``text``."""
    return [(m.group(2), m.group(3)) for m in SIGNATURE.finditer(text)]


def write(path: Path = API) -> None:
    """Rewrite every signature block of ``path`` from the code."""
    text = path.read_text(encoding="utf-8")
    new = SIGNATURE.sub(lambda m: m.group(1) + render(m.group(2)) + "\n" + m.group(4), text)
    path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite docs/api.md's blocks")
    if parser.parse_args().write:
        write()
    for dotted, _ in blocks(API.read_text(encoding="utf-8")):
        print(render(dotted), end="\n\n")
