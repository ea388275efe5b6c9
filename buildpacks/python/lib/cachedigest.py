#!/usr/bin/env python3
"""Digests of the trees a buildpack keeps in CACHE_DIR.

  cachedigest.py check [--keep] CACHE_DIR NAME...
  cachedigest.py record CACHE_DIR NAME...

CACHE_DIR may be shared (a CACHE_URL object) or written by someone else, and
what is copied from it into a build could reach the slug. `record` (at the
end of a build) writes a digest of every tree NAME (a path beneath
CACHE_DIR) to CACHE_DIR/.digests/; `check` (before a build uses them)
deletes every tree whose digest is missing or differs, so that the build
makes it again as a cold build would, and says which. `check --keep`
leaves the digest of a tree that matches in place, for a tree the build
only reads (a layer of installed dependencies it copies), so that it need
not be recorded again. The digest covers
every entry's path, type, permission bits, size and content (sha256), or a
link's target; not mtimes. Standard library only.
"""

import hashlib
import os
import shutil
import stat
import sys


def tree_digest(root):
    h = hashlib.sha256()

    def entry(rel, st, full):
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            h.update(b"L\0%s\0%s\0" % (rel, os.fsencode(os.readlink(full))))
        elif stat.S_ISDIR(mode):
            h.update(b"D\0%s\0%o\0" % (rel, stat.S_IMODE(mode)))
        elif stat.S_ISREG(mode):
            f = hashlib.sha256()
            with open(full, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    f.update(chunk)
            h.update(b"F\0%s\0%o\0%d\0%s\0" % (rel, stat.S_IMODE(mode), st.st_size, f.hexdigest().encode()))
        else:
            h.update(b"X\0%s\0%o\0" % (rel, mode))

    top = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            entry(os.path.normpath(os.path.join(rel_dir, name)), os.lstat(full), full)
    return h.hexdigest()


def digest_path(cache_dir, name):
    return os.path.join(cache_dir, ".digests", name.replace("/", "%") + ".sha256")


def main(argv):
    keep = argv[1:2] == ["--keep"] and argv[0] == "check"
    if keep:
        argv = argv[:1] + argv[2:]
    if len(argv) < 2 or argv[0] not in ("check", "record"):
        raise SystemExit(__doc__)
    action, cache_dir, names = argv[0], argv[1], argv[2:]
    os.makedirs(os.path.join(cache_dir, ".digests"), exist_ok=True)
    for name in names:
        tree = os.path.join(cache_dir, name)
        record = digest_path(cache_dir, name)
        if action == "record":
            if os.path.isdir(tree) and not os.path.islink(tree):
                with open(record + ".tmp", "w") as f:
                    f.write(tree_digest(tree) + "\n")
                os.replace(record + ".tmp", record)
            elif os.path.lexists(record):
                os.unlink(record)
            continue
        if not os.path.lexists(tree):
            continue
        try:
            with open(record) as f:
                expected = f.read().strip()
        except OSError:
            expected = None
        if os.path.islink(tree) or not os.path.isdir(tree):
            why = "is not a directory"
        elif expected is None:
            why = "has no recorded digest"
        elif tree_digest(tree) != expected:
            why = "does not match the digest recorded when it was made"
        else:
            why = None
        # Until this build records it again: a build that stops half-way
        # leaves a tree that the next one does not trust.
        if (why or not keep) and os.path.lexists(record):
            os.unlink(record)
        if why:
            print("       Cache %s %s: discarded, it is made again" % (name, why))
            if os.path.islink(tree) or not os.path.isdir(tree):
                os.unlink(tree)
            else:
                shutil.rmtree(tree)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
