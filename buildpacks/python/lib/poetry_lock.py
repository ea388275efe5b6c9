"""Turn a poetry.lock into pip requirements for the main group only.

Usage: python poetry_lock.py BUILD_DIR HASHED_OUT PLAIN_OUT

Poetry itself is not needed (nor can its resolver run against an index that
serves only the simple API): the lock already names every package with its
exact version and the sha256 of each of its files. Writes two requirement
files: HASHED_OUT pins every package with `--hash` options (pip then checks
every download against the lock), PLAIN_OUT the same pins without hashes (to
install the wheels pip built or cached in the first step). Prints `root` on
stdout when the project itself must be installed too (a package, not an app
with `package-mode = false`). Problems go to stderr, with exit status 1.

Which packages belong to the main group:
- lock-version 2.1 (Poetry 2) records it: `groups` and, per group, `markers`;
- older locks do not: walk the dependency graph from the main dependencies
  in pyproject.toml, following only the edges whose markers hold here.
Markers are evaluated for this interpreter and platform, so the requirement
lines carry none.
"""

import os
import re
import sys
import tomllib

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
except ImportError:  # the virtualenv always has pip, which vendors packaging
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version


class LockError(Exception):
    pass


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def holds(marker, extras=()):
    """Whether a PEP 508 marker is true here (for any of the given extras)."""
    if not marker:
        return True
    try:
        parsed = Marker(marker)
    except Exception as e:
        raise LockError(f"invalid marker {marker!r}: {e}") from None
    return any(parsed.evaluate({"extra": extra}) for extra in (list(extras) or [""]))


def constraints(spec):
    """Poetry dependency spec (string, table or list of tables) -> list of tables."""
    if isinstance(spec, str):
        return [{"version": spec}]
    if isinstance(spec, dict):
        return [spec]
    if isinstance(spec, list):
        return [c if isinstance(c, dict) else {"version": str(c)} for c in spec]
    return []


def root_dependencies(pyproject):
    """(name, extras, marker) of the project's main dependencies."""
    deps = []
    for line in pyproject.get("project", {}).get("dependencies", []) or []:
        try:
            req = Requirement(line)
        except Exception as e:
            raise LockError(f"invalid dependency {line!r} in pyproject.toml: {e}") from None
        deps.append((req.name, sorted(req.extras), str(req.marker) if req.marker else ""))
    poetry = pyproject.get("tool", {}).get("poetry", {})
    tables = [poetry.get("dependencies", {}), poetry.get("group", {}).get("main", {}).get("dependencies", {})]
    for table in tables:
        for name, spec in (table or {}).items():
            if normalize(name) == "python":
                continue
            for c in constraints(spec):
                if c.get("optional"):
                    continue  # only installed for one of the project's extras
                deps.append((name, c.get("extras", []), c.get("markers", "")))
    return deps


def pick(candidates, version_spec):
    """The locked package among same-named ones that satisfies version_spec."""
    if len(candidates) == 1 or not version_spec or version_spec == "*":
        return candidates[0]
    try:
        spec = SpecifierSet(version_spec)
        for package in candidates:
            if Version(package["version"]) in spec:
                return package
    except Exception:
        pass
    return candidates[0]


def walk(packages, roots):
    """Packages reachable from roots through edges whose markers hold here."""
    by_name = {}
    for package in packages:
        by_name.setdefault(normalize(package["name"]), []).append(package)
    selected = {}  # id(package) -> package
    extras_of = {}  # id(package) -> extras already followed
    queue = [(name, extras, marker, "") for name, extras, marker in roots]
    while queue:
        name, extras, marker, version_spec = queue.pop()
        if not holds(marker):
            continue
        candidates = by_name.get(normalize(name))
        if not candidates:
            raise LockError(f"{name} is a dependency but is not in poetry.lock: run 'poetry lock'")
        package = pick(candidates, version_spec)
        key = id(package)
        wanted = set(normalize(e) for e in extras)
        if key in selected and wanted <= extras_of[key]:
            continue
        selected[key] = package
        extras_of[key] = extras_of.get(key, set()) | wanted
        optional_names = set()
        for extra, reqs in (package.get("extras") or {}).items():
            if normalize(extra) in extras_of[key]:
                for req in reqs:
                    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
                    if m:
                        optional_names.add(normalize(m.group(1)))
        for dep, spec in (package.get("dependencies") or {}).items():
            for c in constraints(spec):
                if c.get("optional") and normalize(dep) not in optional_names:
                    continue
                queue.append((dep, c.get("extras", []), c.get("markers", ""), c.get("version", "")))
    return list(selected.values())


def main_group(lock, pyproject):
    packages = lock.get("package", []) or []
    # A main dependency that pyproject.toml declares and the lock lacks: the
    # lock is older than pyproject.toml, and Poetry would refuse it too.
    locked = {normalize(p["name"]) for p in packages}
    for name, _extras, marker in root_dependencies(pyproject):
        if holds(marker) and normalize(name) not in locked:
            raise LockError(f"{name} is a dependency in pyproject.toml but is not in poetry.lock: run 'poetry lock'")
    if packages and all("groups" in p for p in packages):
        chosen = []
        for package in packages:
            if "main" not in package["groups"]:
                continue
            markers = package.get("markers", "")
            if isinstance(markers, dict):
                markers = markers.get("main", "")
            if holds(markers):
                chosen.append(package)
        return chosen
    return walk(packages, root_dependencies(pyproject))


def requirement(package):
    """(requirement line, hash options, index url or None)."""
    name, version = package["name"], package["version"]
    hashes = [f"--hash={f['hash']}" for f in package.get("files", []) or [] if f.get("hash")]
    source = package.get("source") or {}
    kind = source.get("type", "")
    url = source.get("url", "")
    if kind in ("", "legacy"):
        return f"{name}=={version}", hashes, (url if kind == "legacy" else None)
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference") or ""
        line = f"{name} @ git+{url}" + (f"@{ref}" if ref else "")
        if source.get("subdirectory"):
            line += f"#subdirectory={source['subdirectory']}"
        return line, [], None
    if kind == "url":
        return f"{name} @ {url}", hashes, None
    if kind in ("file", "directory"):
        path = url if os.path.isabs(url) else "./" + url
        return path, (hashes if kind == "file" else []), None
    raise LockError(f"{name}: unsupported source type {kind!r} in poetry.lock")


def main():
    build_dir, hashed_out, plain_out = sys.argv[1:4]
    try:
        with open(os.path.join(build_dir, "poetry.lock"), "rb") as f:
            lock = tomllib.load(f)
        with open(os.path.join(build_dir, "pyproject.toml"), "rb") as f:
            pyproject = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LockError(f"cannot read poetry.lock/pyproject.toml: {e}") from None
    lines, hashed, indexes, unhashed = [], [], [], []
    for package in sorted(main_group(lock, pyproject), key=lambda p: normalize(p["name"])):
        line, hashes, index = requirement(package)
        lines.append(line)
        hashed.append(" ".join([line, *hashes]))
        if not hashes:
            unhashed.append(package["name"])
        if index and index not in indexes:
            indexes.append(index)
    head = [f"--extra-index-url {url}" for url in indexes]
    if unhashed:
        # pip checks hashes for all requirements or none.
        print(
            "poetry.lock has no file hashes for " + ", ".join(unhashed) + " (git, directory or"
            " hashless sources): installing without hash checks",
            file=sys.stderr,
        )
        hashed = lines
    with open(hashed_out, "w", encoding="utf-8") as f:
        f.write("\n".join(head + hashed) + "\n")
    with open(plain_out, "w", encoding="utf-8") as f:
        f.write("\n".join(head + lines) + "\n")
    poetry = pyproject.get("tool", {}).get("poetry", {})
    if "build-system" in pyproject and poetry.get("package-mode", True) is not False:
        print("root")


if __name__ == "__main__":
    try:
        main()
    except LockError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
