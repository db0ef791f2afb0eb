"""Reads the Terraform root module with python-hcl2 and resolves the simple expressions it uses.

python-hcl2 and checkov's fork (bc-python-hcl2) both install the module ``hcl2``; scripts/check-infra.sh
puts python-hcl2 in .venv/deploy/python-hcl2 and on PYTHONPATH. Run directly (``python -m pytest``
with .venv/deploy's Python) this module finds that directory itself.

Only what the module's own code needs is evaluated: ``var.X`` (the default; ``<var.X>`` without one),
``local.X``, ``TYPE.NAME.attribute`` of a resource or data source (``[0]`` of a counted one),
``coalesce(...)`` and string templates made of those. Anything else stays as ``<expression>``, so a
comparison against a wanted value fails instead of passing by accident.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _import_hcl2():
    def is_python_hcl2(mod) -> bool:
        try:
            from importlib.metadata import version

            return hasattr(mod, "utils") and int(version("python-hcl2").split(".")[0]) >= 7
        except Exception:
            return False

    venv = Path(os.environ.get("DEPLOY_VENV", ROOT / ".venv" / "deploy"))
    apart = venv / "python-hcl2"
    if apart.is_dir() and str(apart) not in sys.path:
        sys.path.insert(0, str(apart))
        for name in [m for m in sys.modules if m == "hcl2" or m.startswith("hcl2.")]:
            del sys.modules[name]
    import hcl2  # noqa: E402
    import hcl2.utils  # noqa: E402

    if not is_python_hcl2(hcl2):
        raise ImportError(
            f"the `hcl2` module at {hcl2.__file__} is not python-hcl2 >= 7 (checkov's bc-python-hcl2?): "
            "run scripts/check-infra.sh, which installs python-hcl2 into .venv/deploy/python-hcl2"
        )
    return hcl2


hcl2 = _import_hcl2()
_OPTIONS = hcl2.utils.SerializationOptions(strip_string_quotes=True, explicit_blocks=True, with_comments=False)


def _clean(value):
    """Drops python-hcl2's ``__is_block__`` markers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def split_args(text: str) -> list[str]:
    """Splits ``a, "b, c", f(d, e)`` at top-level commas."""
    parts, cur, depth, quote, i = [], [], 0, False, 0
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\":
                cur.append(text[i + 1])
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
            cur.append(c)
        elif c in "([{":
            depth += 1
            cur.append(c)
        elif c in ")]}":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _interpolations(template: str):
    """(start, end, expression) of each ``${...}`` of a template, nested braces and quotes included."""
    i = 0
    while True:
        start = template.find("${", i)
        if start < 0:
            return
        depth, j, quote = 0, start + 1, False
        while True:
            c = template[j]
            if quote:
                if c == "\\":
                    j += 1
                elif c == '"':
                    quote = False
            elif c == '"':
                quote = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        yield start, j + 1, template[start + 2 : j]
        i = j + 1


REF = re.compile(r"^(?P<data>data\.)?(?P<type>google_[a-z0-9_]+)\.(?P<name>[a-z0-9_]+)(?:\[0\])?\.(?P<attr>[a-z0-9_]+)$")


class Module:
    """The parsed .tf files of one directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.files = {}
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.resources: dict[tuple[str, str], dict] = {}
        self.data: dict[tuple[str, str], dict] = {}
        self.outputs: dict[str, dict] = {}
        for path in sorted(self.dir.glob("*.tf")):
            with open(path, encoding="utf-8") as f:
                doc = _clean(hcl2.load(f, serialization_options=_OPTIONS))
            self.files[path.name] = doc
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("locals", []):
                self.locals.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in doc.get(kind, []):
                    for rtype, instances in block.items():
                        for name, body in instances.items():
                            target[(rtype, name)] = body

    # --- access ---

    def resource(self, rtype: str, name: str) -> dict:
        try:
            return self.resources[(rtype, name)]
        except KeyError:
            raise AssertionError(f"{self.dir}: no resource {rtype}.{name}") from None

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {n: b for (t, n), b in self.resources.items() if t == rtype}

    def default(self, var: str):
        if var not in self.variables:
            raise AssertionError(f"{self.dir}: no variable {var}")
        return self.variables[var].get("default", f"<var.{var}>")

    @staticmethod
    def block(body: dict, name: str) -> dict:
        """The single nested block ``name`` of ``body`` ({} when absent)."""
        blocks = body.get(name, [])
        if isinstance(blocks, dict):
            return blocks
        return blocks[0] if blocks else {}

    @staticmethod
    def blocks(body: dict, name: str) -> list[dict]:
        blocks = body.get(name, [])
        return [blocks] if isinstance(blocks, dict) else list(blocks)

    @staticmethod
    def dynamic(body: dict, name: str) -> list[dict]:
        """The ``dynamic "name"`` blocks of ``body``: [{"for_each": ..., "content": {...}}]."""
        out = []
        for d in Module.blocks(body, "dynamic"):
            if name in d:
                spec = d[name]
                out.append({"for_each": spec.get("for_each"), "content": Module.block(spec, "content")})
        return out

    # --- evaluation ---

    def resolve(self, value):
        """Value of an attribute: literals as they are, expressions evaluated where simple."""
        if isinstance(value, str) and "${" in value:
            spans = list(_interpolations(value))
            if len(spans) == 1 and spans[0][0] == 0 and spans[0][1] == len(value):
                return self.expr(spans[0][2])
            out, last = [], 0
            for start, end, expr in spans:
                out.append(value[last:start])
                out.append(str(self.expr(expr)))
                last = end
            out.append(value[last:])
            return "".join(out)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def expr(self, text: str):
        text = text.strip()
        if text.startswith('"') and text.endswith('"'):
            return self.resolve(text[1:-1])
        if text == "null":
            return None
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        m = re.fullmatch(r"var\.([a-z0-9_]+)", text)
        if m:
            return self.default(m.group(1))
        m = re.fullmatch(r"local\.([a-z0-9_]+)", text)
        if m:
            if m.group(1) not in self.locals:
                raise AssertionError(f"{self.dir}: no local {m.group(1)}")
            return self.resolve(self.locals[m.group(1)])
        m = re.fullmatch(r"coalesce\((.*)\)", text, re.S)
        if m:
            for arg in split_args(m.group(1)):
                v = self.expr(arg)
                if v not in (None, ""):
                    return v
            return None
        m = REF.match(text)
        if m:
            return self.attribute(bool(m.group("data")), m.group("type"), m.group("name"), m.group("attr"))
        return f"<{text}>"

    def attribute(self, is_data: bool, rtype: str, name: str, attr: str):
        """A resource attribute: arguments as written, plus the computed ones the module reads."""
        if is_data:
            return f"<data.{rtype}.{name}.{attr}>"
        body = self.resource(rtype, name)
        if rtype == "google_service_account":
            account = self.resolve(body["account_id"])
            project = self.default("project_id")
            if attr == "email":
                return f"{account}@{project}.iam.gserviceaccount.com"
            if attr == "name":
                return f"projects/{project}/serviceAccounts/{account}@{project}.iam.gserviceaccount.com"
        if attr in body:
            return self.resolve(body[attr])
        if attr == "id" and "name" in body:  # topics, subscriptions: the id names the same resource
            return self.resolve(body["name"])
        return f"<{rtype}.{name}.{attr}>"

    def ref_target(self, value) -> tuple[str, str] | None:
        """(type, name) of the resource a ``${TYPE.NAME...}`` value refers to."""
        if isinstance(value, str):
            m = re.fullmatch(r"\$\{(google_[a-z0-9_]+)\.([a-z0-9_]+)(?:\[0\])?(?:\.[a-z0-9_]+)?\}", value)
            if m:
                return m.group(1), m.group(2)
        return None


def strings(value):
    """Every string anywhere in a parsed value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
