#!/usr/bin/env python3
"""Which of the stack's Python versions an app's `requires-python` allows.

  requires_python.py BUILD_DIR VERSION...

Prints "SPEC<TAB>SOURCE" on the first line (empty when the app states no
constraint), then every VERSION that satisfies it, one per line, in the
order given. Reads `[project] requires-python` from pyproject.toml, else
`requires-python` from uv.lock. Specifiers are PEP 440's, for release
versions (what interpreters report): ==, !=, <=, >=, <, >, ~= and ===, with
`.*` wildcards for == and !=. A specifier it cannot read is reported on
stderr and allows nothing, so that the caller fails rather than guesses.
Standard library only (tomllib: Python 3.11+; older ones see no constraint).
"""

import os
import re
import sys

SPEC = re.compile(r"^\s*(===|==|!=|<=|>=|~=|<|>)\s*v?([0-9]+(?:\.[0-9]+)*)(\.\*)?\s*$")


def release(text):
    return tuple(int(p) for p in text.split("."))


def pad(v, n):
    return v + (0,) * (n - len(v))


def allows(spec, version):
    """Whether VERSION (a release tuple) satisfies one specifier clause."""
    m = SPEC.match(spec)
    if not m:
        raise ValueError(spec)
    op, target, wildcard = m.group(1), release(m.group(2)), bool(m.group(3))
    if wildcard:
        if op not in ("==", "!="):
            raise ValueError(spec)
        same = version[: len(target)] == target
        return same if op == "==" else not same
    n = max(len(version), len(target))
    v, t = pad(version, n), pad(target, n)
    if op in ("==", "==="):
        return v == t
    if op == "!=":
        return v != t
    if op == "<=":
        return v <= t
    if op == ">=":
        return v >= t
    if op == "<":
        return v < t
    if op == ">":
        return v > t
    # ~=X.Y[.Z]: >= X.Y[.Z] and the same release up to the last given part.
    if len(target) < 2:
        raise ValueError(spec)
    return v >= t and version[: len(target) - 1] == target[:-1]


def constraint(build_dir):
    """(specifier string, where it was read) or (None, None)."""
    try:
        import tomllib
    except ImportError:
        return None, None
    for name, get in (
        ("pyproject.toml", lambda d: (d.get("project") or {}).get("requires-python")),
        ("uv.lock", lambda d: d.get("requires-python")),
    ):
        path = os.path.join(build_dir, name)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, ValueError):
            continue
        spec = get(data) if isinstance(data, dict) else None
        if isinstance(spec, str) and spec.strip():
            return spec.strip(), name
    return None, None


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    build_dir, versions = argv[0], argv[1:]
    spec, source = constraint(build_dir)
    print("%s\t%s" % (spec or "", source or ""))
    for version in versions:
        try:
            ok = spec is None or all(allows(c, release(version)) for c in spec.split(",") if c.strip())
        except ValueError as e:
            print("unreadable requires-python clause %r in %s" % (str(e), source), file=sys.stderr)
            return 0
        if ok:
            print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
