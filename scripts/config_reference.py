"""Print the config reference (every `section.key`, type, default, meaning) as a Markdown table,
read from the field docstrings in schemas/config.py. The README embeds this output between the
`<!-- config-reference -->` markers; tests/unit/test_readme.py keeps the two in sync.

    python scripts/config_reference.py
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from schemas.config import SECTIONS

SOURCE = Path(__file__).resolve().parents[1] / "schemas" / "config.py"


def field_docs() -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} from the attribute docstrings in the source."""
    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(SOURCE.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = docs.setdefault(node.name, {})
        body = node.body
        for stmt, nxt in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                    fields[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def render() -> str:
    docs = field_docs()
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            shown = "null" if value is None else repr(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)
            lines.append(f"| `{section}.{f.name}` | `{shown}` | {docs.get(cls.__name__, {}).get(f.name, '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
