"""Turn a Pipfile.lock (or, without a lock, a Pipfile) into pip requirements.

Usage: python pipfile_lock.py BUILD_DIR > requirements
pipenv itself is not needed: the lock's "default" section already lists every
package with its exact version, hashes and markers.
"""

import json
import os
import sys


def from_lock(lock):
    lines = []
    for name, spec in sorted(lock.get("default", {}).items()):
        if isinstance(spec, str):
            lines.append(name if spec == "*" else f"{name}{spec}")
            continue
        extras = spec.get("extras") or []
        req = name + (f"[{','.join(extras)}]" if extras else "")
        for vcs in ("git", "hg", "svn", "bzr"):
            if vcs in spec:
                ref = f"@{spec['ref']}" if spec.get("ref") else ""
                req = f"{req} @ {vcs}+{spec[vcs]}{ref}"
                break
        else:
            if "path" in spec:
                req = spec["path"]
            elif "file" in spec:
                req = f"{req} @ {spec['file']}"
            elif spec.get("version") and spec["version"] != "*":
                req += spec["version"]
        if spec.get("markers"):
            req += f" ; {spec['markers']}"
        lines.append(req)
    return lines


def from_pipfile(pipfile):
    import tomllib

    lines = []
    for name, spec in sorted(pipfile.get("packages", {}).items()):
        if isinstance(spec, str):
            lines.append(name if spec == "*" else f"{name}{spec}")
        elif "path" in spec:
            lines.append(spec["path"])
        elif "git" in spec:
            ref = f"@{spec['ref']}" if spec.get("ref") else ""
            lines.append(f"{name} @ git+{spec['git']}{ref}")
        else:
            extras = spec.get("extras") or []
            version = spec.get("version", "*")
            req = name + (f"[{','.join(extras)}]" if extras else "")
            lines.append(req if version == "*" else req + version)
    return lines


def main():
    build_dir = sys.argv[1]
    lock_path = os.path.join(build_dir, "Pipfile.lock")
    if os.path.exists(lock_path):
        with open(lock_path, encoding="utf-8") as f:
            lines = from_lock(json.load(f))
    else:
        import tomllib

        with open(os.path.join(build_dir, "Pipfile"), "rb") as f:
            lines = from_pipfile(tomllib.load(f))
    print("\n".join(lines))


main()
