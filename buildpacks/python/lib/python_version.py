#!/usr/bin/env python3
"""Which of the stack's Pythons an app gets.

  python_version.py BUILD_DIR STRICT VERSION...

VERSIONs are the stack's interpreters (X.Y.Z), oldest first; STRICT is
PYTHON_VERSION_STRICT ("" when unset). Prints "VERSION<TAB>WHY<TAB>HINT" on
stdout (HINT: a line for later errors when the app asked for another
Python), warnings on stderr, or fails (exit 1) with an `-----> Error:`
message on stderr. Standard library only; every string read from the app
is escaped before it is printed.

The request is `.python-version` (one version line; `#` comments), else
`runtime.txt` (`python-3.12`). A version is `3.12` (the newest 3.12.x),
`3.12.4`, or, as uv reads the file, PEP 440 specifiers: `>=3.10`, `3.12.*`,
`~=3.11`, `>=3.10,<3.13` (the newest interpreter that satisfies them).
`requires-python` ([project] in pyproject.toml, else uv.lock) is always
read, and an interpreter it does not allow is never used.
"""

import os
import re
import sys

# The newest release of every Python minor version that this buildpack knows
# (python.org; 3.15.0 is October 2026's), so that a version that was never
# released is refused rather than replaced. A version the stack has counts as
# released too, so a stack with a newer Python than this table still works.
LATEST_PATCH = {
    (2, 0): 1, (2, 1): 3, (2, 2): 3, (2, 3): 7, (2, 4): 6, (2, 5): 6, (2, 6): 9, (2, 7): 18,
    (3, 0): 1, (3, 1): 5, (3, 2): 6, (3, 3): 7, (3, 4): 10, (3, 5): 10, (3, 6): 15,
    (3, 7): 17, (3, 8): 20, (3, 9): 25, (3, 10): 21, (3, 11): 16, (3, 12): 14,
    (3, 13): 15, (3, 14): 7, (3, 15): 0,
}
# Heroku's rule (January 2026): versions whose upstream support has ended
# fail the build; the newest of them gets a warning for a few months first.
EOL_BEFORE = (3, 10)
DEPRECATED = {(3, 10): "October 2026"}

OPS = ("===", "==", "!=", "<=", ">=", "~=", "<", ">")
CLAUSE = re.compile(r"^\s*(===|==|!=|<=|>=|~=|<|>)?\s*v?([0-9]+(?:\.[0-9]+)*)(\.\*)?\s*$")
PLAIN = re.compile(r"^([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?$")


def esc(text, limit=200):
    """TEXT with every character that is not printable escaped, shortened."""
    out = []
    for ch in text[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:
            # A byte that is not UTF-8 (read with surrogateescape): as the byte.
            out.append("\\x%02x" % (ord(ch) - 0xDC00))
        elif ord(ch) < 0x100:
            out.append("\\x%02x" % ord(ch))
        else:
            out.append("\\u%04x" % ord(ch) if ord(ch) < 0x10000 else "\\U%08x" % ord(ch))
    return "".join(out) + ("..." if len(text) > limit else "")


def say(kind, title, *details):
    print("-----> %s: %s" % (kind, title), file=sys.stderr)
    for line in details:
        print("       " + line, file=sys.stderr)


def fail(title, *details):
    say("Error", title, *details)
    sys.exit(1)


def vstr(v):
    return ".".join(str(p) for p in v)


class Unreadable(ValueError):
    pass


def parse_specifiers(text):
    """[(op, release tuple, wildcard)] for a PEP 440 specifier set; a clause
    without an operator is read as `==` with a wildcard."""
    clauses = []
    for part in text.split(","):
        m = CLAUSE.match(part)
        if not m or not part.strip():
            raise Unreadable(part.strip())
        op, target, wildcard = m.group(1), tuple(int(p) for p in m.group(2).split(".")), bool(m.group(3))
        if op is None:
            # A bare version (`3.12.*`, `3.12`), as uv and pip-tools users
            # write it: the releases it is a prefix of.
            op, wildcard = "==", True
        if wildcard and op not in ("==", "!="):
            raise Unreadable(part.strip())
        if op == "~=" and len(target) < 2:
            raise Unreadable(part.strip())
        clauses.append((op, target, wildcard))
    return clauses


def satisfies(version, clauses):
    for op, target, wildcard in clauses:
        if wildcard:
            same = version[: len(target)] == target + (0,) * max(0, len(target) - len(version))
            ok = same if op == "==" else not same
        else:
            n = max(len(version), len(target))
            v, t = version + (0,) * (n - len(version)), target + (0,) * (n - len(target))
            ok = {
                "==": v == t, "===": v == t, "!=": v != t, "<=": v <= t,
                ">=": v >= t, "<": v < t, ">": v > t,
                "~=": v >= t and version[: len(target) - 1] == target[:-1],
            }[op]
        if not ok:
            return False
    return True


def read_toml(path):
    try:
        import tomllib
    except ImportError:  # Python < 3.11: only the key this needs
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                m = re.search(r'^\s*requires-python\s*=\s*["\']([^"\'\n]*)["\']', f.read(), re.M)
        except OSError:
            return None
        return {"project": {"requires-python": m.group(1)}, "requires-python": m.group(1)} if m else {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError):
        return None


def requires_python(build_dir):
    """(specifier text, clauses, file) or (None, None, None)."""
    for name, get in (
        ("pyproject.toml", lambda d: (d.get("project") or {}).get("requires-python")),
        ("uv.lock", lambda d: d.get("requires-python")),
    ):
        data = read_toml(os.path.join(build_dir, name))
        if not isinstance(data, dict):
            continue
        spec = get(data)
        if not isinstance(spec, str) or not spec.strip():
            continue
        try:
            return spec.strip(), parse_specifiers(spec), name
        except Unreadable as e:
            fail(
                "Invalid requires-python in %s: '%s'" % (name, esc(spec.strip())),
                "The clause '%s' is not a PEP 440 version specifier (such as '>=3.11'," % esc(str(e)),
                "'>=3.10,<3.14' or '==3.12.*'). Fix it so that the build knows which Python",
                "the app needs.",
            )
    return None, None, None


def read_request(build_dir):
    """(request text, file) or (None, None)."""
    path = os.path.join(build_dir, ".python-version")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = [line.strip() for line in f.read().splitlines()]
        versions = [line for line in lines if line and not line.startswith("#")]
        if not versions:
            fail(
                "Invalid Python version in .python-version",
                "No Python version was found in .python-version: every line is empty or a",
                "comment. Write a version such as 3.12 on a line of its own (a line that",
                "starts with # is a comment).",
            )
        if len(versions) > 1:
            fail(
                "Invalid Python version in .python-version",
                "It names more than one Python version: %s." % ", ".join("'%s'" % esc(v) for v in versions[:5]),
                "Keep one version line; put comments on lines that start with #.",
            )
        if os.path.isfile(os.path.join(build_dir, "runtime.txt")):
            say("Warning", "Both .python-version and runtime.txt exist; using .python-version",
                "runtime.txt is deprecated: delete it.")
        return versions[0], ".python-version"
    path = os.path.join(build_dir, "runtime.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read().strip()
        return (text[len("python-"):] if text.startswith("python-") else text), "runtime.txt"
    return None, None


def main(argv):
    build_dir, strict, stack = argv[0], argv[1] not in ("", "0", "false", "no"), argv[2:]
    stack = [tuple(int(p) for p in v.split(".")) for v in stack]
    available = ", ".join(vstr(v) for v in stack)
    on_stack = "Available on this stack: %s" % available
    req_text, req_file = read_request(build_dir)
    spec_text, spec, spec_file = requires_python(build_dir)
    spec_desc = "requires-python '%s' (%s)" % (esc(spec_text), spec_file) if spec_text else ""

    def allowed(v):
        return spec is None or satisfies(v, spec)

    def released(v):
        if any(s[: len(v)] == v for s in stack):
            return True
        latest = LATEST_PATCH.get(v[:2])
        return latest is not None and (len(v) < 3 or v[2] <= latest)

    def check_supported(v, shown):
        if v[:2] < EOL_BEFORE:
            fail(
                "Python %s (requested in %s) has reached its upstream end-of-life" % (shown, req_file),
                "It no longer gets security updates, and this buildpack (like Heroku's, since",
                "January 2026) does not build apps on it: change %s to a supported" % req_file,
                "version. %s" % on_stack,
            )
        if v[:2] in DEPRECATED:
            say("Warning", "Python %s reached its upstream end-of-life in %s" % (vstr(v[:2]), DEPRECATED[v[:2]]),
                "It no longer gets security updates, and a later version of this buildpack",
                "will refuse it (as Heroku's does after a few months). Upgrade to a newer Python.")

    def conflict(v, why):
        fail(
            "Python %s (%s) does not satisfy the app's %s" % (vstr(v), why, spec_desc),
            on_stack + ".",
            "Change %s or requires-python so that they agree." % (req_file or ".python-version"),
        )

    req = req_text
    if req is not None:
        for prefix in ("cpython@", "cpython-", "python-", "cpython", "python"):
            if req.lower().startswith(prefix):
                req = req[len(prefix):]
                break
    if req is None or req == "system":
        # No request: the newest interpreter requires-python allows.
        ok = [v for v in stack if allowed(v)]
        if not ok:
            fail(
                "None of the Pythons on this stack satisfies the app's %s" % spec_desc,
                on_stack + ". This buildpack uses the stack's interpreters and never",
                "downloads one.",
            )
        v = ok[-1]
        why = "the newest available that %s allows" % spec_desc if spec and v != stack[-1] else \
            "the newest available; pin one in .python-version"
        if req == "system":
            why = "the newest available, as %s asks" % req_file
        print("%s\t%s\t" % (vstr(v), why))
        return 0

    shown = esc(req_text)
    plain = PLAIN.match(req)
    if not plain:
        # PEP 440 specifiers, as uv reads .python-version (`3.12.*` alone
        # means `==3.12.*`).
        text = req
        if re.match(r"^\s*v?[0-9]+(\.[0-9]+)*\.\*\s*$", text):
            text = "==" + text.strip()
        try:
            clauses = parse_specifiers(text)
        except Unreadable:
            fail(
                "Invalid Python version '%s' in %s" % (shown, req_file),
                "Write a version such as 3.12 (the newest 3.12.x) or 3.12.4, or version specifiers",
                "such as >=3.11, ~=3.12 or 3.12.* in %s. %s" % (req_file, on_stack),
            )
        matching = [v for v in stack if satisfies(v, clauses)]
        if not matching:
            fail(
                "No Python on this stack satisfies '%s' (from %s)" % (shown, req_file),
                on_stack + ". This buildpack uses the stack's interpreters and never",
                "downloads one: change %s to a range that one of them satisfies." % req_file,
            )
        ok = [v for v in matching if allowed(v)]
        if not ok:
            conflict(matching[-1], "the newest satisfying '%s' from %s" % (shown, req_file))
        v = ok[-1]
        check_supported(v, vstr(v))
        print("%s\tthe newest available that '%s' from %s allows\t" % (vstr(v), shown, req_file))
        return 0

    want = tuple(int(p) for p in plain.groups() if p is not None)
    if len(want) >= 2 and not released(want):
        latest = LATEST_PATCH.get(want[:2])
        known = ("the newest %s release is %s.%d" % (vstr(want[:2]), vstr(want[:2]), latest)) \
            if latest is not None else "there is no Python %s" % vstr(want[:2])
        fail(
            "Python %s (requested in %s) has never been released" % (shown, req_file),
            "It is not a Python release this buildpack knows of (%s)." % known,
            on_stack + ". Change %s to one of these, or to a version such as %s." % (req_file, vstr(stack[-1][:2])),
        )
    if len(want) >= 2:
        check_supported(want, shown)
    same = [v for v in stack if v[: len(want)] == want]
    if not same and len(want) == 3:
        same_minor = [v for v in stack if v[:2] == want[:2]]
        if same_minor:
            v = same_minor[-1]
            if not allowed(v):
                conflict(v, "the stack's %s" % vstr(want[:2]))
            say("Warning", "Python %s is not available; using %s (same minor release)" % (shown, vstr(v)),
                on_stack)
            print("%s\tfrom %s\t" % (vstr(v), req_file))
            return 0
    if same:
        v = same[-1]
        if not allowed(v):
            conflict(v, "from %s" % req_file)
        print("%s\tfrom %s\t" % (vstr(v), req_file))
        return 0

    # A released version that the stack lacks. A .python-version often just
    # records the developer's own Python (uv init, pyenv local) and most apps
    # run on the stack's: build with the nearest release requires-python
    # allows (the next newer one, else the newest), and say so loudly.
    not_here = "Python %s (requested in %s) is not available on this stack" % (shown, req_file)
    if strict:
        fail(not_here, on_stack,
             "Change %s to one of these; this buildpack uses the stack's" % req_file,
             "interpreters and never downloads one (PYTHON_VERSION_STRICT is set).")
    same_major = [v for v in stack if v[0] == want[0]]
    if not same_major:
        fail(not_here, on_stack,
             "Change %s to one of these; this buildpack uses the stack's" % req_file,
             "interpreters and never downloads one.")
    ok = [v for v in same_major if allowed(v)]
    if not ok:
        fail(not_here,
             "%s; the app's %s allows none of them." % (on_stack, spec_desc),
             "This buildpack uses the stack's interpreters and never downloads one.")
    newer = [v for v in ok if v >= want]
    v = newer[0] if newer else ok[-1]
    allowed_by = ", which %s allows" % spec_desc if spec_desc else ""
    say("Warning", "%s: building with Python %s instead%s" % (not_here, vstr(v), allowed_by),
        "%s. The app may need features of Python %s:" % (on_stack, shown),
        "test it, or pin an available version in %s." % req_file,
        "Set PYTHON_VERSION_STRICT=1 to fail the build instead.")
    print("%s\tinstead of %s from %s\tThey may need Python %s, which this stack lacks (built with %s instead)."
          % (vstr(v), shown, req_file, shown, vstr(v)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1:]))
