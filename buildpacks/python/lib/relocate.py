"""Make an installed virtualenv work from the app dir instead of the build dir.

Usage: python relocate.py VENV BUILD_DIR APP_DIR [OLD_VENV_PATH...]

A virtualenv itself relocates fine (its python finds pyvenv.cfg next to it);
what does not are absolute paths written at install time:
- console scripts (gunicorn, pip, ...) get a shebang naming the venv's python
  by absolute path: replace it with a /bin/sh trampoline that execs the python
  next to the script, wherever the tree ends up;
- .pth files, editable-install finders and direct_url.json name BUILD_DIR,
  activate scripts and pyvenv.cfg name the venv (or the cached base venv it
  was copied from): point them at APP_DIR.

Every file rewritten here is also listed, with its hash and size, in the
RECORD of the distribution that installed it. Those entries are updated to
the new content: otherwise RECORD keeps the hash of a file as it was first
written under a random build path, and the same app gives a different slug
at every build.
"""

import base64
import csv
import hashlib
import io
import os
import sys

venv, build_dir, app_dir, *old_venvs = sys.argv[1:]
app_venv = os.path.join(app_dir, ".heroku/python")
venv_prefixes = [os.path.join(p, "bin") + "/" for p in [venv, *old_venvs]]
rewritten = set()

TRAMPOLINE = (
    "#!/bin/sh\n"
    "'''exec' \"$(dirname -- \"$(readlink -f -- \"$0\")\")/{python}\" \"$0\" \"$@\"\n"
    "' '''\n"
)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    rewritten.add(os.path.normpath(path))


def replace_paths(path, pairs):
    """Replace each (old, new) in the file, rewriting it only if it changes."""
    with open(path, "rb") as f:
        data = f.read()
    new = data
    for old, repl in pairs:
        new = new.replace(old.encode(), repl.encode())
    if new != data:
        write(path, new)


bin_dir = os.path.join(venv, "bin")
for name in sorted(os.listdir(bin_dir)):
    path = os.path.join(bin_dir, name)
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    if name.startswith("activate") or name == "Activate.ps1":
        # No shebang: they name the venv by absolute path.
        replace_paths(path, [(old, app_venv) for old in [venv, *old_venvs]])
        continue
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"#!"):
        continue
    first, _, rest = data.partition(b"\n")
    interp = first[2:].decode(errors="replace").strip()
    for prefix in venv_prefixes:
        if interp.startswith(prefix) and " " not in interp:
            python = interp[len(prefix):]
            write(path, TRAMPOLINE.format(python=python).encode() + rest)
            break

# `command = python -m venv /cache/python/base-venv` names where the cached
# base was made.
cfg = os.path.join(venv, "pyvenv.cfg")
if os.path.isfile(cfg):
    replace_paths(cfg, [(old, app_venv) for old in [venv, *old_venvs]])

site_dirs = []
for root, dirs, files in os.walk(os.path.join(venv, "lib")):
    dirs.sort()
    if not root.endswith("site-packages"):
        continue
    site_dirs.append(root)
    for name in sorted(files):
        if name.endswith(".pth") or (name.startswith("__editable__") and name.endswith(".py")):
            replace_paths(os.path.join(root, name), [(build_dir, app_dir)])
    for name in sorted(dirs):
        direct_url = os.path.join(root, name, "direct_url.json")
        if name.endswith(".dist-info") and os.path.isfile(direct_url):
            # A local project (`pip install .`, `-e .`) records the build dir.
            replace_paths(direct_url, [(build_dir, app_dir)])


def record_hash(path):
    with open(path, "rb") as f:
        data = f.read()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode(), str(len(data))


def fix_record(site_dir, record):
    with open(record, "rb") as f:
        lines = f.read().decode("utf-8").splitlines(keepends=True)
    changed = False
    out = []
    for line in lines:
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        rows = list(csv.reader([body]))
        row = rows[0] if rows else []
        if len(row) == 3 and row[1]:
            target = os.path.normpath(os.path.join(site_dir, row[0]))
            if target in rewritten:
                new_row = [row[0], *record_hash(target)]
                if new_row != row:
                    buf = io.StringIO()
                    csv.writer(buf, lineterminator="").writerow(new_row)
                    line = buf.getvalue() + ending
                    changed = True
        out.append(line)
    if changed:
        with open(record, "wb") as f:
            f.write("".join(out).encode("utf-8"))


if rewritten:
    for site_dir in site_dirs:
        for name in sorted(os.listdir(site_dir)):
            record = os.path.join(site_dir, name, "RECORD")
            if name.endswith(".dist-info") and os.path.isfile(record):
                fix_record(site_dir, record)
