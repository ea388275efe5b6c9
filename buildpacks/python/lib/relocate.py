"""Make an installed virtualenv work from the app dir instead of the build dir.

Usage: python relocate.py VENV BUILD_DIR APP_DIR [OLD_VENV_PATH...]

A virtualenv itself relocates fine (its python finds pyvenv.cfg next to it);
what does not are absolute paths written at install time:
- console scripts (gunicorn, pip, ...) get a shebang naming the venv's python
  by absolute path: replace it with a /bin/sh trampoline that execs the python
  next to the script, wherever the tree ends up;
- .pth files and editable-install finders name BUILD_DIR: point them at APP_DIR.
"""

import os
import sys

venv, build_dir, app_dir, *old_venvs = sys.argv[1:]
venv_prefixes = [os.path.join(p, "bin") + "/" for p in [venv, *old_venvs]]

TRAMPOLINE = (
    "#!/bin/sh\n"
    "'''exec' \"$(dirname -- \"$(readlink -f -- \"$0\")\")/{python}\" \"$0\" \"$@\"\n"
    "' '''\n"
)

bin_dir = os.path.join(venv, "bin")
for name in sorted(os.listdir(bin_dir)):
    path = os.path.join(bin_dir, name)
    if os.path.islink(path) or not os.path.isfile(path):
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
            with open(path, "wb") as f:
                f.write(TRAMPOLINE.format(python=python).encode() + rest)
            break

# activate scripts have no shebang; fix them separately.
for name in os.listdir(bin_dir):
    if name.startswith("activate") or name == "Activate.ps1":
        path = os.path.join(bin_dir, name)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        new = text
        for old in [venv, *old_venvs]:
            new = new.replace(old, os.path.join(app_dir, ".heroku/python"))
        if new != text:
            with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(new)

for root, _dirs, files in os.walk(os.path.join(venv, "lib")):
    if not root.endswith("site-packages"):
        continue
    for name in files:
        if not (name.endswith(".pth") or (name.startswith("__editable__") and name.endswith(".py"))):
            continue
        path = os.path.join(root, name)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        if build_dir in text:
            with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text.replace(build_dir, app_dir))
