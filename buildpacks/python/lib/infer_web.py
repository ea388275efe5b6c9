"""Infer the default `web` process of a Python app that has no Procfile web entry.

Usage: python infer_web.py BUILD_DIR   (FLASK_APP is read from the environment)

Prints one tab-separated line, or nothing when nothing can be inferred:
    web<TAB>COMMAND<TAB>FILE      the command and the file it was inferred from
    warn<TAB>MESSAGE              an app was found but no server to run it

The app's code is only parsed (ast), never imported or run. A server is used
only when the app installed it (its script is in .heroku/python/bin): the
buildpack never adds a dependency, and never falls back to a framework's
development server. Every command binds 0.0.0.0:$PORT.
"""

import ast
import os
import re
import shlex
import sys

build_dir = sys.argv[1]
bin_dir = os.path.join(build_dir, ".heroku", "python", "bin")

WSGI_FRAMEWORKS = {"flask": "Flask", "bottle": "Bottle"}
ASGI_FRAMEWORKS = {"fastapi": "FastAPI", "starlette": "Starlette", "quart": "Quart", "litestar": "Litestar"}
FACTORIES = ("create_app", "make_app")


def installed(script):
    return os.path.isfile(os.path.join(bin_dir, script))


def distributions():
    """Normalized names of the distributions installed in the virtualenv."""
    names = set()
    lib = os.path.join(build_dir, ".heroku", "python", "lib")
    for pyver in os.listdir(lib) if os.path.isdir(lib) else []:
        site = os.path.join(lib, pyver, "site-packages")
        for entry in os.listdir(site) if os.path.isdir(site) else []:
            if entry.endswith(".dist-info"):
                names.add(re.sub(r"[-_.]+", "-", entry.split("-", 1)[0]).lower())
    return names


def installed_kind():
    """'wsgi' or 'asgi' when the app installed web frameworks of one kind only."""
    dists = distributions()
    kinds = {k for k, names in (("wsgi", WSGI_FRAMEWORKS), ("asgi", ASGI_FRAMEWORKS)) if dists & set(names)}
    return kinds.pop() if len(kinds) == 1 else None


class Module:
    """What a Python file defines and imports, read without running it."""

    def __init__(self, path):
        self.imports = set()
        self.objects = {}  # module-level name -> callee of the call assigned to it
        self.functions = set()
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                self.imports.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                self.imports.add(node.module.split(".")[0])
        for node in tree.body:
            targets = []
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            for target in targets:
                if isinstance(target, ast.Name):
                    callee = ""
                    if isinstance(value, ast.Call):
                        func = value.func
                        callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    self.objects[target.id] = callee
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.add(node.name)

    def kind_of(self, callee):
        """'wsgi', 'asgi' or None for an object made by calling callee."""
        for module, cls in WSGI_FRAMEWORKS.items():
            if callee == cls and module in self.imports:
                return "wsgi"
        for module, cls in ASGI_FRAMEWORKS.items():
            if callee == cls and module in self.imports:
                return "asgi"
        return self.framework_kind()

    def framework_kind(self):
        """From the file's imports, else from what the app installed (a
        wsgi.py that only does `from myapp import create_app`)."""
        if self.imports & set(WSGI_FRAMEWORKS):
            return "wsgi"
        if self.imports & set(ASGI_FRAMEWORKS):
            return "asgi"
        if "streamlit" in self.imports:
            return None
        return installed_kind()


def parse(path):
    try:
        return Module(path)
    except (OSError, SyntaxError, ValueError):
        return None


def command(kind, target, factory):
    """A server command for a WSGI/ASGI app `module:attr`, or None."""
    module, attr = target
    spec = shlex.quote(f"{module}:{attr}")
    call = shlex.quote(f"{module}:{attr}()")  # servers that call a factory
    if kind == "wsgi":
        if installed("gunicorn"):
            return f"gunicorn {call if factory else spec} --bind 0.0.0.0:$PORT"
        if installed("waitress-serve"):
            return f"waitress-serve --listen=0.0.0.0:$PORT{' --call' if factory else ''} {spec}"
        return None
    if installed("uvicorn"):
        return f"uvicorn {spec}{' --factory' if factory else ''} --host 0.0.0.0 --port $PORT"
    if installed("hypercorn"):
        return f"hypercorn {call if factory else spec} --bind 0.0.0.0:$PORT"
    if installed("daphne") and not factory:
        return f"daphne --bind 0.0.0.0 --port $PORT {spec}"
    return None


NO_SERVER = {
    "wsgi": "add gunicorn (or waitress) to the dependencies",
    "asgi": "add uvicorn (or hypercorn, daphne) to the dependencies",
}


def web(cmd, source):
    print(f"web\t{cmd}\t{source}")
    sys.exit(0)


def warn(message):
    print(f"warn\t{message}")
    sys.exit(0)


def serve(kind, module, attr, factory, source, what):
    cmd = command(kind, (module, attr), factory)
    if cmd:
        web(cmd, source)
    warn(f"{what} ({source}) has no server installed to run it: {NO_SERVER[kind]},"
         " or declare web in a Procfile")


def app_in(module_name, rel, forced_kind=None):
    """Look for an app object or factory in the file rel (module module_name)."""
    mod = parse(os.path.join(build_dir, rel))
    if mod is None:
        return
    for attr in ("app", "application"):
        if attr in mod.objects:
            kind = forced_kind or mod.kind_of(mod.objects[attr])
            if kind:
                serve(kind, module_name, attr, False, rel, f"the {kind.upper()} app `{attr}`")
    for attr in FACTORIES:
        if attr in mod.functions:
            kind = forced_kind or mod.framework_kind()
            if kind:
                serve(kind, module_name, attr, True, rel, f"the {kind.upper()} app factory `{attr}`")


def django():
    if not os.path.isfile(os.path.join(build_dir, "manage.py")):
        return
    with open(os.path.join(build_dir, "manage.py"), encoding="utf-8", errors="replace") as f:
        m = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([A-Za-z0-9_.]+)", f.read())
    packages = []
    if m and "." in m.group(1):
        packages.append(m.group(1).rsplit(".", 1)[0])
    for entry in sorted(os.listdir(build_dir)):
        if os.path.isfile(os.path.join(build_dir, entry, "wsgi.py")) or os.path.isfile(
            os.path.join(build_dir, entry, "asgi.py")
        ):
            packages.append(entry)
    for package in packages:
        rel = package.replace(".", "/")
        wsgi = os.path.isfile(os.path.join(build_dir, rel, "wsgi.py"))
        asgi = os.path.isfile(os.path.join(build_dir, rel, "asgi.py"))
        if wsgi and installed("gunicorn"):
            web(f"gunicorn {package}.wsgi --bind 0.0.0.0:$PORT", f"{rel}/wsgi.py")
        if asgi:
            cmd = command("asgi", (f"{package}.asgi", "application"), False)
            if cmd:
                web(cmd, f"{rel}/asgi.py")
        if wsgi:
            cmd = command("wsgi", (f"{package}.wsgi", "application"), False)
            if cmd:
                web(cmd, f"{rel}/wsgi.py")
        if wsgi or asgi:
            need = NO_SERVER["wsgi"] if wsgi else NO_SERVER["asgi"]
            warn(f"the Django project {package} has no server installed to run it: {need},"
                 " or declare web in a Procfile")


def flask_app_var():
    """FLASK_APP: `module`, `module:attr`, `module:factory()` or `path/file.py`."""
    value = os.environ.get("FLASK_APP", "").strip()
    target, _, attr = value.partition(":")
    if target.endswith(".py"):
        target = target[:-3].replace("/", ".").strip(".")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", target) or not re.fullmatch(
        r"([A-Za-z_][A-Za-z0-9_]*(\([ -~]*\))?)?", attr
    ):
        return
    rel = target.replace(".", "/")
    # src/: a project installed as a package (src layout).
    for candidate in (f"{rel}.py", f"{rel}/__init__.py", f"src/{rel}.py", f"src/{rel}/__init__.py"):
        if os.path.isfile(os.path.join(build_dir, candidate)):
            break
    else:
        return
    source = f"{candidate}, FLASK_APP"
    if attr:
        factory = attr.endswith(")")
        name = attr.split("(", 1)[0] if factory else attr
        if factory and attr != name + "()":
            # Arguments: only gunicorn calls a factory with them.
            if installed("gunicorn"):
                web(f"gunicorn {shlex.quote(target + ':' + attr)} --bind 0.0.0.0:$PORT", source)
            warn(f"the Flask app `{attr}` ({source}) needs gunicorn to call it with arguments:"
                 " add gunicorn to the dependencies, or declare web in a Procfile")
        serve("wsgi", target, name, factory, source, f"the Flask app `{attr}`")
    mod = parse(os.path.join(build_dir, candidate))
    if mod is None:
        return
    for name in ("app", "application"):
        if name in mod.objects:
            serve("wsgi", target, name, False, source, f"the Flask app `{name}`")
    for name in FACTORIES:
        if name in mod.functions:
            serve("wsgi", target, name, True, source, f"the Flask app factory `{name}`")


def streamlit():
    if not installed("streamlit"):
        return
    preferred = ["streamlit_app.py", "app.py", "main.py", "Home.py"]
    others = sorted(
        f for f in os.listdir(build_dir) if re.fullmatch(r"[A-Za-z0-9_-]+\.py", f) and f not in preferred
    )
    for rel in preferred + others:
        path = os.path.join(build_dir, rel)
        if os.path.isfile(path):
            mod = parse(path)
            if mod is not None and "streamlit" in mod.imports:
                web(
                    f"streamlit run {rel} --server.port $PORT --server.address 0.0.0.0"
                    " --server.headless true",
                    rel,
                )


django()
flask_app_var()
for module_name, rel in (("app", "app.py"), ("main", "main.py"), ("wsgi", "wsgi.py"), ("app.main", "app/main.py")):
    if os.path.isfile(os.path.join(build_dir, rel)):
        app_in(module_name, rel)
streamlit()
