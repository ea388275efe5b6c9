#!/usr/bin/env python3
"""Helpers of the nodejs buildpack that need more than bash, run with the
stack's python3 (standard library only; the build may have no node yet):

  nodejs.py validate PACKAGE_JSON            exit 1 with an error when invalid
  nodejs.py get PACKAGE_JSON KEY.PATH         print a string field, or nothing
  nodejs.py has-script PACKAGE_JSON NAME      exit 0 when scripts[NAME] exists
  nodejs.py runtime BUILD_DIR CACHE_DIR OUT [--defer-npm DIR]
                                              choose and install Node.js and npm; write
                                              package.json's facts and the result to OUT
                                              (shell assignments); with --defer-npm, npm's
                                              files are only planned (DIR/plan.json)
  nodejs.py install-tree PLAN                 carry out such a plan
  nodejs.py package-manager yarn|pnpm BUILD_DIR CACHE_DIR BIN_DIR [options]
  nodejs.py release BUILD_DIR                 bin/release's YAML
  nodejs.py prune-plan BUILD_DIR PM           "keep BIN PACKAGE" (scripts.start or a Procfile
                                              command runs a program only a devDependency
                                              provides), "nothing" (npm would prune nothing)
                                              or "prune"
  nodejs.py finish BUILD_DIR CACHE_DIR USED_FILE
                                              say the default web process; drop the cached
                                              versions this build did not use
  nodejs.py semver-check                      stdin "VERSION<TAB>RANGE" -> 1, 0 or E

Settings (environment): NODE_RUNTIME_REGISTRY, else npm's registry setting
(npm_config_registry, or `registry=` in the app's .npmrc), else the public
npm registry; NODE_RUNTIME_DOWNLOAD=false keeps the stack's node, npm, yarn
and pnpm.
"""

import json
import os
import re
import shlex
import shutil
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pkgcache  # noqa: E402
import semver  # noqa: E402

# The registry client (urllib, ssl: ~80 ms to import) is only loaded when the
# registry has to be asked.


def reg():
    import registry

    return registry

INDENT = "       "


class BuildError(Exception):
    def __init__(self, title, *hints):
        super().__init__(title)
        self.title = title
        self.hints = hints


def header(msg):
    print("-----> " + msg, flush=True)


def info(msg):
    print(INDENT + msg, flush=True)


def warn(title, *hints):
    sys.stdout.flush()
    print("-----> Warning: " + title, file=sys.stderr)
    for h in hints:
        print(INDENT + h, file=sys.stderr)
    sys.stderr.flush()


# --- package.json ----------------------------------------------------------------


def read_package(path):
    with open(path, encoding="utf-8-sig") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError("package.json must hold a JSON object")
    return doc


def valid_package(path):
    try:
        return read_package(path)
    except (OSError, ValueError) as e:
        raise BuildError("package.json is not valid JSON", str(e))


def facts_of(pkg):
    """What bin/compile needs to know of package.json, as shell variables."""
    scripts = pkg.get("scripts") if isinstance(pkg.get("scripts"), dict) else {}
    return {
        "PKG_NAME": pkg.get("name") if isinstance(pkg.get("name"), str) else "",
        "PKG_PACKAGE_MANAGER": pkg.get("packageManager") if isinstance(pkg.get("packageManager"), str) else "",
        "PKG_SCRIPTS": "\n".join(sorted(k for k, v in scripts.items() if isinstance(v, str) and "\n" not in k)),
        # Whether it declares any package to install (else a missing lockfile
        # pins nothing).
        "PKG_HAS_DEPS": "1" if any(
            pkg.get(k) for k in ("dependencies", "devDependencies", "optionalDependencies")
        ) else "",
    }


def shell_assignments(values):
    return "".join("%s=%s\n" % (k, shlex.quote(v)) for k, v in sorted(values.items()))


def get_path(doc, dotted):
    v = doc
    for k in dotted.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return v


def engines(pkg):
    e = pkg.get("engines")
    return e if isinstance(e, dict) else {}


def engine(pkg, name):
    """engines.NAME as text, None when unset; a non-string is an error."""
    v = engines(pkg).get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise BuildError(
            "engines.%s in package.json must be a string" % name,
            'Write a version range such as "22.x".',
        )
    return v.strip()


class PackageManagerField:
    """packageManager: "pnpm@9.15.0+sha512.abc..." (corepack's format)."""

    def __init__(self, text):
        self.text = text
        self.name, _, rest = text.partition("@")
        self.version, _, hashpart = rest.partition("+")
        self.hash = None
        if hashpart:
            algo, _, hexdigest = hashpart.partition(".")
            if algo in ("sha1", "sha224", "sha256", "sha384", "sha512") and re.fullmatch(r"[0-9a-fA-F]+", hexdigest):
                self.hash = (algo, hexdigest.lower())


def package_manager_field(pkg):
    v = pkg.get("packageManager")
    if isinstance(v, str) and "@" in v and v.split("@", 1)[0] in ("npm", "yarn", "pnpm"):
        return PackageManagerField(v.strip())
    return None


# --- Settings ----------------------------------------------------------------------


def env_ci(name):
    """An npm setting from the environment: npm reads npm_config_* in any case."""
    name = name.lower()
    for k, v in sorted(os.environ.items()):
        if k.lower() == name and v:
            return v
    return None


def npmrc_value(path, key):
    """A top-level key of an npmrc file (with npm's ${VAR} expansion), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        m = re.match(r"^\s*%s\s*=\s*(.+?)\s*$" % re.escape(key), line)
        if m:
            value = m.group(1).strip("\"'")
            return re.sub(r"\$\{([^}]+)\}", lambda v: os.environ.get(v.group(1), ""), value)
    return None


def npm_setting(build_dir, key):
    """An npm setting as npm would see it for this build: the environment,
    the app's .npmrc, then the stack's global npmrc."""
    v = env_ci("npm_config_" + key)
    if v:
        return v
    v = npmrc_value(os.path.join(build_dir, ".npmrc"), key)
    if v:
        return v
    globalconfig = env_ci("npm_config_globalconfig")
    return npmrc_value(globalconfig, key) if globalconfig else None


def registry_setting(build_dir):
    return os.environ.get("NODE_RUNTIME_REGISTRY") or npm_setting(build_dir, "registry") or reg().DEFAULT_REGISTRY


def downloads_allowed():
    return os.environ.get("NODE_RUNTIME_DOWNLOAD", "").strip().lower() not in ("0", "false", "no", "off")


def node_package():
    """The registry package with this machine's official Node.js binaries."""
    system, machine = os.uname().sysname, os.uname().machine
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine.lower())
    if system != "Linux" or arch is None:
        return None, "%s-%s" % (system.lower(), machine)
    return "node-linux-%s" % arch, "linux-%s" % arch


class Context:
    def __init__(self, build_dir, cache_dir):
        self.build_dir = build_dir
        self.cache_dir = cache_dir
        self.pkg = valid_package(os.path.join(build_dir, "package.json"))
        self.allowed = downloads_allowed()
        self._registry = None
        root = os.path.join(cache_dir, "runtimes")
        try:
            os.makedirs(root, exist_ok=True)
            writable = os.access(root, os.W_OK | os.X_OK)
        except OSError:
            writable = False
        if not writable:
            warn("CACHE_DIR is not writable: Node.js and npm are downloaded for this build only")
            import tempfile

            root = os.path.join(os.environ.get("NODEJS_BP_WORK") or tempfile.mkdtemp(), "runtimes")
        self.cache = pkgcache.Cache(root, info, os.environ.get("NODEJS_BP_USED"))

    @property
    def registry(self):
        if self._registry is None:
            url = registry_setting(self.build_dir)
            self._registry = reg().Registry(url, cafile=npm_setting(self.build_dir, "cafile"))
        return self._registry


# --- Stack tools ---------------------------------------------------------------------


def world_reachable(path):
    """Whether any user can run path (the app runs unprivileged)."""
    try:
        p = os.path.realpath(path)
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return False
        d = os.path.dirname(p)
        while True:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            if d == "/":
                return True
            d = os.path.dirname(d)
    except OSError:
        return False


def stack_tool(name):
    """(path, version) of a tool on PATH, or None."""
    path = shutil.which(name)
    if not path:
        return None
    if not world_reachable(path):
        warn(
            "%s is not accessible to unprivileged users" % path,
            "The app runs as an unprivileged user; install %s outside private directories." % name,
        )
    import subprocess

    try:
        out = subprocess.run([path, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    version = out.stdout.decode("utf-8", "replace").strip().splitlines()
    if out.returncode != 0 or not version:
        return None
    return path, version[0].strip()


# --- Resolution ---------------------------------------------------------------------


def parse_range(text, label):
    try:
        return semver.Range(text)
    except semver.RangeError:
        raise BuildError(
            "%s '%s' is not a version range npm understands" % (label, text),
            'Use a semver range such as "22.x", "^22.11", ">=20 <23" or an exact "22.11.0".',
        )


def versions_of(packument):
    out = {}
    for text, man in packument["versions"].items():
        v = semver.parse_version(text)
        if v is not None and v.text == text and isinstance(man, dict):
            out[v] = man
    return out


def newest_hint(versions, count=6):
    """The newest release of each of the newest majors, for error hints."""
    best = {}
    for v in versions:
        if not v.pre and (v.major not in best or v > best[v.major]):
            best[v.major] = v
    return ", ".join(str(best[m]) for m in sorted(best, reverse=True)[:count])


def pick(versions, rng):
    """Newest version rng admits, preferring ones that are not deprecated."""
    matching = [v for v in versions if rng.satisfies(v)]
    fine = [v for v in matching if not versions[v].get("deprecated")]
    pool = fine or matching
    return max(pool) if pool else None


def resolve(ctx, name, text, label, what):
    """(version text, manifest or None) for the newest release of name that
    the range text admits. An exact version is not looked up here, so that a
    cached copy needs no registry request at all."""
    rng = parse_range(text, label)
    exact = semver.parse_version(text)
    if exact is not None and not re.match(r"^\s*[<>~^]", text):
        return exact.text, None
    versions = versions_of(ctx.registry.packument(name))
    best = pick(versions, rng)
    if best is None:
        raise BuildError(
            "No %s release on the registry matches %s '%s'" % (what, label, text),
            "Registry: %s (package %s)" % (ctx.registry.display, name),
            "Newest available: %s" % (newest_hint(versions) or "none"),
        )
    return best.text, versions[best]


def prewarm_newest(ctx, name, text):
    """Start checking the newest cached release of name that the range text
    admits: on a warm build it is usually the one the registry will pick."""
    try:
        rng = semver.Range(text)
    except semver.RangeError:
        return
    cached = [v for v in map(semver.parse_version, ctx.cache.versions(name)) if v is not None and rng.satisfies(v)]
    if cached:
        ctx.cache.prewarm(name, max(cached).text)


def manifest_or_fail(ctx, name, version, what, label):
    def fetch():
        man = ctx.registry.manifest(name, version)
        if man is None:
            try:
                hint = newest_hint(versions_of(ctx.registry.packument(name)))
            except pkgcache.RegistryError:
                hint = ""
            raise BuildError(
                "The registry has no %s %s (%s)" % (what, version, label),
                "Registry: %s (package %s)" % (ctx.registry.display, name),
                "Newest available: %s" % (hint or "unknown"),
            )
        return man

    return fetch


def supports_node(manifest, node_version):
    """Whether a package's engines.node admits node_version (unknown: yes)."""
    e = (manifest or {}).get("engines")
    rng_text = e.get("node") if isinstance(e, dict) else None
    if not isinstance(rng_text, str):
        return True
    try:
        return semver.Range(rng_text).satisfies(node_version)
    except semver.RangeError:
        return True


def bins_of(name, manifest):
    """{command: path in the package} from a manifest's bin field."""
    b = (manifest or {}).get("bin")
    if isinstance(b, str):
        b = {name.split("/")[-1]: b}
    if not isinstance(b, dict):
        return {}
    out = {}
    for cmd, rel in b.items():
        if isinstance(cmd, str) and isinstance(rel, str) and re.fullmatch(r"[A-Za-z0-9._-]+", cmd):
            rel = os.path.normpath(rel).lstrip("/")
            if not rel.startswith(".."):
                out[cmd] = rel
    return out


def fetch(ctx, name, version, manifest, what, label, keep=None, tarball_hash=None, unwrap=None):
    """The verified cache entry of name@version (downloaded if needed)."""
    getter = (lambda: manifest) if manifest is not None else manifest_or_fail(ctx, name, version, what, label)
    return ctx.cache.get(
        ctx.registry,
        name,
        version,
        manifest=manifest,
        manifest_fn=getter,
        keep=keep,
        unwrap=unwrap,
        tarball_hash=tarball_hash,
        bins=lambda man: bins_of(name, man).values(),
    )


# --- Node.js and npm -------------------------------------------------------------------


def node_lts(ctx, versions):
    """The newest release of the newest line that is LTS, from the release
    data the node-releases package publishes on the registry."""
    name = "node-releases"
    latest = ctx.registry.latest(name)
    if not latest:
        raise BuildError("The registry has no %s package to tell which Node.js is LTS" % name)
    entry = fetch(ctx, name, latest, None, name, "dist-tag latest", keep=lambda p: p == "data/processed/envs.json")
    try:
        with open(os.path.join(entry.package, "data/processed/envs.json")) as f:
            releases = json.load(f)
    except (OSError, ValueError):
        raise BuildError("%s@%s has no readable release list" % (name, latest), "Set engines.node in package.json.")
    first_lts, codename = {}, {}
    for r in releases if isinstance(releases, list) else []:
        if not isinstance(r, dict) or r.get("name") != "nodejs" or not r.get("lts"):
            continue
        v = semver.parse_version(str(r.get("version")))
        if v is None or v.pre:
            continue
        if v.major not in first_lts or v < first_lts[v.major]:
            first_lts[v.major] = v
            codename[v.major] = str(r["lts"])
    lts = [v for v in versions if not v.pre and v.major in first_lts and v >= first_lts[v.major]]
    if not lts:
        raise BuildError("No LTS release of Node.js found on the registry", "Set engines.node in package.json.")
    best = max(lts)
    return best, codename[best.major]


def install_node(ctx, home, name, version, manifest, label):
    # Only the binary and its licence: the headers (include/, 67 MB) would
    # only serve node-gyp, which npm no longer lets us point at them.
    keep = lambda p: p in ("bin/node", "LICENSE")  # noqa: E731
    # Old releases (0.8.6 to 4.0.0) hold the release tarball itself, with
    # the npm of that release, the only one such a Node.js can run.
    with_npm = lambda p: keep(p) or p.startswith(BUNDLED_NPM)  # noqa: E731
    wrapped = lambda p: with_npm if re.fullmatch(r"node-v[0-9][0-9.]*-linux-[a-z0-9]+\.tar\.gz", p) else None  # noqa: E731
    entry = fetch(ctx, name, version, manifest, "Node.js", label, keep=keep, unwrap=wrapped)
    if "bin/node" not in entry.files:
        raise BuildError(
            "%s@%s has no bin/node" % (name, version),
            "It holds: %s" % (", ".join(sorted(entry.files)) or "nothing the buildpack uses"),
        )
    pkgcache.install_files(entry.package, home, [r for r in ("bin/node", "LICENSE") if r in entry.files])
    return entry


NPM_DOCS = ("docs/", "man/")
BUNDLED_NPM = "lib/node_modules/npm/"


def bundled_npm(entry):
    """The version of the npm a Node.js package holds (old releases only),
    or None."""
    if BUNDLED_NPM + "package.json" not in entry.files:
        return None
    try:
        with open(os.path.join(entry.package, BUNDLED_NPM, "package.json"), encoding="utf-8") as f:
            v = json.load(f).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) and semver.parse_version(v) is not None else None


def install_bundled_npm(entry, home):
    """The npm of an old Node.js release into home, as install_npm does."""
    with open(os.path.join(entry.package, BUNDLED_NPM, "package.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    n = len(BUNDLED_NPM)
    files = [f[n:] for f in entry.files if f.startswith(BUNDLED_NPM)]
    install_tree(
        {
            "package": os.path.join(entry.package, BUNDLED_NPM),
            "dest": os.path.join(home, "lib", "node_modules", "npm"),
            "files": sorted(f for f in files if not f.startswith(NPM_DOCS)),
            "bin": os.path.join(home, "bin"),
            "links": {cmd: os.path.join("..", "lib", "node_modules", "npm", rel) for cmd, rel in sorted(bins_of("npm", manifest).items())},
        }
    )


def install_npm(ctx, home, version, manifest, label, defer_dir=None):
    """npm@version into home (lib/node_modules/npm, and bin/npm, bin/npx).
    With defer_dir, only verify it and write the plan of its files to
    defer_dir/plan.json (for `install-tree`, which the build runs beside the
    dependency install), and point defer_dir/bin's commands at the verified
    cached copy for the meantime."""
    entry = fetch(ctx, "npm", version, manifest, "npm", label)
    dest = os.path.join(home, "lib", "node_modules", "npm")
    if os.path.lexists(dest):
        shutil.rmtree(dest)
    bins = sorted(bins_of("npm", entry.manifest).items())
    plan = {
        "package": entry.package,
        "dest": dest,
        # Not its documentation (docs/, man/: ~270 files no app runs).
        "files": sorted(f for f in entry.files if not f.startswith(NPM_DOCS)),
        "bin": os.path.join(home, "bin"),
        "links": {cmd: os.path.join("..", "lib", "node_modules", "npm", rel) for cmd, rel in bins},
    }
    if defer_dir is None:
        install_tree(plan)
        return entry
    tmp_bin = os.path.join(defer_dir, "bin")
    os.makedirs(tmp_bin, exist_ok=True)
    for cmd, rel in bins:
        os.symlink(os.path.join(entry.package, rel), os.path.join(tmp_bin, cmd))
    with open(os.path.join(defer_dir, "plan.json"), "w") as f:
        json.dump(plan, f)
    return entry


def install_tree(plan):
    """Copy (or link) a verified cached package into the slug, then its
    commands: they appear only once every file is in place."""
    pkgcache.install_files(plan["package"], plan["dest"], plan["files"])
    os.makedirs(plan["bin"], exist_ok=True)
    for cmd, target in sorted(plan["links"].items()):
        link = os.path.join(plan["bin"], cmd)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)


# npm 2.0.0 to 6.13.x declare no engines.node, though npm 6 needs Node.js 6
# (6.14.0 declares it) and npm 5 Node.js 4: what their release notes say.
NPM_IMPLIED_ENGINES = ((6, "6 >=6.2.0 || 8 || >=9.3.0"), (5, ">=4"))


def npm_engines(version, manifest):
    """npm's manifest, with the engines.node its release notes imply when
    it declares none (else npm 6.13.7 would be chosen for Node.js 5 and
    fail there with a SyntaxError)."""
    e = (manifest or {}).get("engines")
    if isinstance(e, dict) and isinstance(e.get("node"), str):
        return manifest
    for major, rng in NPM_IMPLIED_ENGINES:
        if version.major == major:
            return {"engines": {"node": rng}}
    return manifest


def default_npm(ctx, node_version, latest=None):
    """(version, manifest, why): npm's latest release when it supports this
    Node.js, else the newest release that does. latest: the `latest`
    dist-tag, when it is already being fetched."""
    latest = latest.get() if latest is not None else ctx.registry.latest("npm")
    needs = ""
    if latest:
        cached = ctx.cache.peek("npm", latest)
        man = {"engines": cached.get("manifest", {}).get("engines")} if cached else ctx.registry.manifest("npm", latest)
        if man is not None and supports_node(man, node_version):
            return latest, (None if cached else man), "the latest npm"
        if man is not None:
            needs = " (the latest, %s, needs Node.js '%s')" % (latest, man["engines"]["node"])
    versions = versions_of(ctx.registry.packument("npm"))
    ok = [v for v in versions if not v.pre and supports_node(npm_engines(v, versions[v]), node_version)]
    ok = [v for v in ok if not versions[v].get("deprecated")] or ok
    if not ok:
        raise BuildError(
            "No npm release on the registry supports Node.js %s" % node_version,
            "Set engines.npm in package.json.",
        )
    best = max(ok)
    return best.text, versions[best], "the newest npm that supports Node.js %s%s" % (node_version, needs)


def cmd_runtime(build_dir, cache_dir, out_path, defer_dir=None):
    """Node.js and npm; writes package.json's facts and what was installed
    to out_path as shell assignments."""
    ctx = Context(build_dir, cache_dir)
    header("Installing Node.js")
    node_req = engine(ctx.pkg, "node")
    npm_req = engine(ctx.pkg, "npm")
    npm_label = "engines.npm"
    pm = package_manager_field(ctx.pkg)
    if npm_req is None and pm is not None and pm.name == "npm":
        npm_req, npm_label = pm.version, "packageManager"
    # A Node.js from the registry comes with the latest npm that supports it:
    # ask for npm's latest while Node.js is being resolved.
    npm_latest = None
    if ctx.allowed and node_req and not npm_req:
        registry = ctx.registry  # made here, not by both threads
        npm_latest = pkgcache.Background(lambda: registry.latest("npm"))
    home = os.path.join(build_dir, ".heroku", "node")
    if os.path.lexists(home):
        shutil.rmtree(home) if os.path.isdir(home) and not os.path.islink(home) else os.unlink(home)
    result = {"NODE_BIN_DIR": "", "NODE_FROM": "stack", "NPM_FROM": "stack", "NODE_VERSION": "", "NPM_VERSION": ""}

    stack_node = stack_tool("node") if (node_req is None or not ctx.allowed) else None
    node_entry = None
    node_from_registry = False
    if not ctx.allowed:
        if stack_node is None:
            raise BuildError(
                "Node.js is not available on this stack and downloads are off (NODE_RUNTIME_DOWNLOAD=false)",
                "Install nodejs in the stack image, or allow the buildpack to fetch Node.js from the npm registry.",
            )
        path, version = stack_node
        info("Downloads are off (NODE_RUNTIME_DOWNLOAD=false): using the stack's Node.js %s (%s)" % (version, path))
        check_stack_version("engines.node", node_req, version, "Node.js")
        node_version = semver.parse_version(version)
    elif node_req is None and stack_node is not None:
        path, version = stack_node
        info("engines.node is not set: using the stack's Node.js %s (%s)" % (version, path))
        info('Set engines.node in package.json (e.g. "%s.x") to choose a version.' % version.lstrip("v").split(".")[0])
        node_version = semver.parse_version(version)
    else:
        name, platform_label = node_package()
        if name is None:
            raise BuildError("No Node.js binaries on the npm registry for this platform (%s)" % platform_label)
        if node_req is not None:
            prewarm_newest(ctx, name, node_req)
            version, manifest = resolve(ctx, name, node_req, "engines.node", "Node.js")
            if manifest is None:
                info("engines.node '%s' (package.json): Node.js %s, an exact version" % (node_req, version))
            else:
                info("engines.node '%s' (package.json): Node.js %s, the newest match on %s" % (node_req, version, ctx.registry.display))
        else:
            versions = versions_of(ctx.registry.packument(name))
            best, codename = node_lts(ctx, versions)
            version, manifest = best.text, versions[best]
            info(
                "engines.node is not set and the stack has no node: Node.js %s, the newest LTS release (%d.x, %s) on %s"
                % (version, best.major, codename, ctx.registry.display)
            )
        node_entry = install_node(ctx, home, name, version, manifest, "engines.node")
        node_from_registry = True
        node_version = semver.parse_version(version)
        result["NODE_BIN_DIR"] = os.path.join(home, "bin")
        result["NODE_FROM"] = "registry"
    result["NODE_VERSION"] = "v%s" % node_version if node_version else ""

    stack_npm = None
    if not ctx.allowed or (npm_req is None and not node_from_registry):
        stack_npm = stack_tool("npm")
    if not ctx.allowed:
        if stack_npm is None:
            raise BuildError(
                "npm is not available on this stack and downloads are off (NODE_RUNTIME_DOWNLOAD=false)",
                "Install npm in the stack image.",
            )
        info("Using the stack's npm %s (%s)" % (stack_npm[1], stack_npm[0]))
        check_stack_version(npm_label, npm_req, stack_npm[1], "npm")
        result["NPM_VERSION"] = stack_npm[1]
    elif npm_req is None and not node_from_registry and stack_npm is not None:
        info("Using the stack's npm %s (%s)" % (stack_npm[1], stack_npm[0]))
        result["NPM_VERSION"] = stack_npm[1]
    else:
        bundled = bundled_npm(node_entry) if (npm_req is None and node_entry is not None) else None
        if npm_req is not None:
            version, manifest = resolve(ctx, "npm", npm_req, npm_label, "npm")
            how = "an exact version" if manifest is None else "the newest match"
            info("%s '%s' (package.json): npm %s, %s" % (npm_label, npm_req, version, how))
        elif bundled:
            # The registry's npm releases without engines.node would be
            # taken as compatible, and fail on it (npm 6 on Node.js 4).
            version = bundled
            info("engines.npm is not set: npm %s, the npm that Node.js %s comes with" % (version, node_version))
        else:
            if node_version is None:
                raise BuildError("Cannot tell which npm suits Node.js %s" % result["NODE_VERSION"], "Set engines.npm in package.json.")
            version, manifest, why = default_npm(ctx, node_version, npm_latest)
            info("engines.npm is not set: npm %s, %s" % (version, why))
        if bundled:
            install_bundled_npm(node_entry, home)
            entry = None
        else:
            entry = install_npm(ctx, home, version, manifest, npm_label, defer_dir)
        result["NPM_DEFERRED"] = (defer_dir or "") if entry is not None else ""
        if entry is not None and node_version is not None and not supports_node(entry.manifest, node_version):
            warn(
                "npm %s does not support Node.js %s (its engines.node is '%s')" % (version, node_version, entry.manifest["engines"]["node"]),
                "Choose another engines.npm or engines.node if the install fails.",
            )
        result["NODE_BIN_DIR"] = os.path.join(home, "bin")
        result["NPM_VERSION"] = version
        result["NPM_FROM"] = "registry"
    if result["NODE_BIN_DIR"]:
        info("Installed in .heroku/node/bin (on PATH at build and run time)")

    result.update(facts_of(ctx.pkg))
    with open(out_path, "w") as f:
        f.write(shell_assignments(result))


def check_stack_version(label, req, version, what):
    if req is None:
        return
    try:
        ok = semver.Range(req).satisfies(semver.parse_version(version))
    except (semver.RangeError, AttributeError, TypeError):
        warn("Could not understand %s '%s'; building with %s %s" % (label, req, what, version))
        return
    if ok:
        info("%s '%s' is satisfied by %s %s" % (label, req, what, version))
    else:
        major = version.lstrip("v").split(".")[0]
        warn(
            "%s '%s' does not match the available %s %s" % (label, req, what, version),
            "Building with %s anyway: downloads are off (NODE_RUNTIME_DOWNLOAD=false)." % version,
            'Change %s in package.json (e.g. "%s.x") to silence this.' % (label, major),
        )


# --- yarn and pnpm ---------------------------------------------------------------------


def printable(text):
    """text from the app, safe to print in the log: control characters and
    non-ASCII escaped."""
    return text.encode("unicode_escape").decode("ascii") if not re.fullmatch(r"[ -~]*", text) else text


def checked_in_yarn(build_dir):
    """The path (relative, normalised) of the yarn release that .yarnrc.yml's
    yarnPath names, which must be a regular file inside the app."""
    path = None
    try:
        with open(os.path.join(build_dir, ".yarnrc.yml"), encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"""^yarnPath:\s*(?:"([^"]*)"|'([^']*)'|([^#\s][^#]*?))\s*(?:#.*)?$""", line.rstrip("\r\n"))
                if m:
                    path = next(g for g in m.groups() if g is not None)
    except OSError:
        pass
    if not path:
        raise BuildError(".yarnrc.yml has a yarnPath that could not be read", "Write it as yarnPath: .yarn/releases/yarn-4.5.3.cjs")
    rel = inside(build_dir, path)
    if rel is None:
        raise BuildError(
            "yarnPath in .yarnrc.yml names %s, which is not a file in the app" % printable(path),
            "Commit the yarn release (yarn set version ...) or remove yarnPath.",
        )
    return rel


def cmd_package_manager(pm, build_dir, cache_dir, bin_dir, berry, yarn_path, default_major):
    ctx = Context(build_dir, cache_dir)
    field = package_manager_field(ctx.pkg)
    req = label = shown = None
    tarball_hash = None
    if field is not None and field.name == pm:
        if semver.parse_version(field.version) is None:
            warn("packageManager '%s' does not name an exact %s version; treating it as a range" % (field.text, pm))
        req, label, tarball_hash = field.version, "packageManager", field.hash
        shown = "%s@%s" % (pm, field.version)
    eng = engine(ctx.pkg, pm)
    if eng is not None:
        if req is None:
            req, label = eng, "engines.%s" % pm
            shown = eng
        else:
            v = semver.parse_version(req)
            try:
                if v is not None and not semver.Range(eng).satisfies(v):
                    warn("packageManager %s@%s does not satisfy engines.%s '%s'; using packageManager" % (pm, req, pm, eng))
            except semver.RangeError:
                pass
    if pm == "yarn" and berry and yarn_path:
        # What any yarn would do (yarn 1 and yarn 2+ defer to yarnPath):
        # run that release with node, whether or not the stack has a yarn.
        release = checked_in_yarn(build_dir)
        info("Using the yarn release checked in with the app: %s (.yarnrc.yml yarnPath), run with node" % printable(release))
        os.makedirs(bin_dir, exist_ok=True)
        for cmd in ("yarn", "yarnpkg"):
            link = os.path.join(bin_dir, cmd)
            with open(link, "w") as f:
                f.write('#!/bin/sh\nexec node %s "$@"\n' % shlex.quote(os.path.join(build_dir, release)))
            os.chmod(link, 0o755)
        with open(os.path.join(bin_dir, ".yarn-release"), "w") as f:
            f.write(release)
        return

    stack = None if (req is not None and ctx.allowed) else stack_tool(pm)
    if stack is not None:
        info("Using the stack's %s %s (%s)" % (pm, stack[1], stack[0]))
        if req is not None and label is not None:
            check_stack_version(label, req, stack[1], pm)
        return
    if not ctx.allowed:
        raise BuildError(
            "%s is not available on this stack and downloads are off (NODE_RUNTIME_DOWNLOAD=false)" % pm,
            "Install %s in the stack image, or use npm (package-lock.json)." % pm,
        )
    if req is None:
        req = default_major
        why = "the default for this lockfile (%s is not on this stack)" % pm
    else:
        why = None
    package = pm
    if pm == "yarn":
        exact = semver.parse_version(req)
        if (exact is not None and exact.major >= 2) or (exact is None and berry):
            package = "@yarnpkg/cli-dist"
    version, manifest = resolve(ctx, package, req, label or "%s version" % pm, pm)
    header("Installing %s %s" % (pm, version))
    if why:
        info("%s %s: %s" % (pm, version, why))
    else:
        info("%s '%s' (package.json): %s %s" % (label, shown, pm, version))
    entry = fetch(ctx, package, version, manifest, pm, label or pm, tarball_hash=tarball_hash)
    if tarball_hash is not None:
        info("The tarball matches the %s hash in packageManager" % tarball_hash[0])
    os.makedirs(bin_dir, exist_ok=True)
    if pm == "pnpm":
        known = manifest if isinstance(manifest, dict) else entry.manifest
        if "optionalDependencies" not in known and "install.js" in entry.files:
            # Cached by an older buildpack, whose stamp kept no
            # optionalDependencies: ask the registry.
            known = manifest_or_fail(ctx, package, version, pm, label or pm)()
        exe = pnpm_platform_package(known)
        if exe is not None:
            install_pnpm_exe(ctx, version, exe, bin_dir)
            return
    bins = bins_of(package, entry.manifest)
    if not bins:
        raise BuildError("%s@%s declares no commands" % (package, version))
    for cmd, rel in sorted(bins.items()):
        target = os.path.join(entry.package, rel)
        if rel not in entry.files:
            raise BuildError("%s@%s has no %s" % (package, version, rel))
        os.chmod(target, 0o755)
        link = os.path.join(bin_dir, cmd)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)


def pnpm_platform_package(manifest):
    """(name, version) of the @pnpm/exe.<platform> package that a launcher
    pnpm (12 and later: its `pnpm` only links or downloads that package's
    binary when its install script runs) names for this machine, or None
    for a pnpm that runs with node."""
    optional = (manifest or {}).get("optionalDependencies") or {}
    if not any(isinstance(k, str) and k.startswith("@pnpm/exe.") for k in optional):
        return None
    _, platform = node_package()
    musl = not _glibc()
    name = "@pnpm/exe.%s%s" % (platform, "-musl" if musl else "")
    version = optional.get(name)
    if not isinstance(version, str) or semver.parse_version(version) is None:
        raise BuildError(
            "pnpm %s is a launcher for a platform package, and names none for %s" % (manifest.get("version"), printable(name)),
            "Use a pnpm version that runs with node (11.x or older) in packageManager or engines.pnpm.",
        )
    return name, version


def _glibc():
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def install_pnpm_exe(ctx, pnpm_version, exe, bin_dir):
    """The pnpm binary from its platform package, fetched from the registry
    like every other package (its integrity checked, cached), rather than by
    the launcher at its first run."""
    name, version = exe
    info("pnpm %s is a launcher: installing its binary from %s@%s" % (pnpm_version, name, version))
    entry = fetch(ctx, name, version, None, "pnpm", "pnpm %s" % pnpm_version)
    if "pnpm" not in entry.files:
        raise BuildError(
            "%s@%s holds no pnpm binary" % (name, version),
            "It holds: %s" % ", ".join(sorted(entry.files)[:10]),
        )
    target = os.path.join(entry.package, "pnpm")
    os.chmod(target, 0o755)
    for cmd in ("pnpm", "pn"):
        link = os.path.join(bin_dir, cmd)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)


# --- Default web process ----------------------------------------------------------------


def inside(build_dir, rel):
    """rel as a regular file inside build_dir (normalised), or None."""
    rel = os.path.normpath(rel)
    if os.path.isabs(rel) or rel == ".." or rel.startswith("../") or rel == ".":
        return None
    full = os.path.join(build_dir, rel)
    real_root = os.path.realpath(build_dir)
    real = os.path.realpath(full)
    if not (real == real_root or real.startswith(real_root + os.sep)):
        return None
    return rel if os.path.isfile(full) else None


def web_process(build_dir):
    """(command, why) of the default web process, or None."""
    try:
        pkg = read_package(os.path.join(build_dir, "package.json"))
    except (OSError, ValueError):
        pkg = {}
    scripts = pkg.get("scripts") if isinstance(pkg.get("scripts"), dict) else {}
    if isinstance(scripts.get("start"), str):
        if os.path.isfile(os.path.join(build_dir, ".heroku/yarn/bin/yarn")) and any(
            os.path.isfile(os.path.join(build_dir, f)) for f in (".pnp.cjs", ".pnp.js")
        ):
            return "yarn start", "scripts.start in package.json, run by yarn for Plug'n'Play"
        return "npm start", "scripts.start in package.json"
    main = pkg.get("main")
    if isinstance(main, str) and main.strip():
        main = main.strip()
        for candidate in (main, main + ".js", os.path.join(main, "index.js")):
            rel = inside(build_dir, candidate)
            if rel:
                return "node " + shlex.quote(rel), "main in package.json"
    for name in ("server.js", "index.js"):
        if inside(build_dir, name):
            return "node " + name, "%s in the app" % name
    return None


def procfile_has_web(build_dir):
    try:
        with open(os.path.join(build_dir, "Procfile"), encoding="utf-8", errors="replace") as f:
            return any(re.match(r"^\s*web(:|\s)", line) for line in f)
    except OSError:
        return False


def run_commands(build_dir, pkg):
    """The commands the app's processes run: scripts.start and the Procfile's."""
    scripts = pkg.get("scripts") if isinstance(pkg.get("scripts"), dict) else {}
    commands = [scripts["start"]] if isinstance(scripts.get("start"), str) else []
    try:
        with open(os.path.join(build_dir, "Procfile"), encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, command = line.partition(":")
                if sep and re.match(r"^\s*[A-Za-z0-9_-]+\s*$", name):
                    commands.append(command)
    except OSError:
        pass
    return commands


def program_of(command):
    """The program a shell command line starts (after VAR=value, env, npx, exec)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in ("env", "exec", "npx", "--")):
        words = words[1:]
    return words[0] if words and "/" not in words[0] else None


def package_of_bin(build_dir, name):
    """The package in node_modules whose file node_modules/.bin/NAME is, or None."""
    link = os.path.join(build_dir, "node_modules", ".bin", name)
    if not os.path.lexists(link):
        return None
    modules = os.path.realpath(os.path.join(build_dir, "node_modules"))
    target = os.path.realpath(link)
    if not target.startswith(modules + os.sep):
        return None
    parts = os.path.relpath(target, modules).split(os.sep)
    if parts[0].startswith("@") and len(parts) > 1:
        return parts[0] + "/" + parts[1]
    return parts[0]


def needs_dev(build_dir, pkg):
    """(BIN, PACKAGE) when scripts.start or a Procfile command runs a program
    that only a devDependency provides, else None."""
    deps = pkg.get("dependencies") if isinstance(pkg.get("dependencies"), dict) else {}
    dev = pkg.get("devDependencies") if isinstance(pkg.get("devDependencies"), dict) else {}
    for command in run_commands(build_dir, pkg):
        name = program_of(command)
        owner = package_of_bin(build_dir, name) if name else None
        if owner and owner in dev and owner not in deps:
            return name, owner
    return None


def nothing_to_prune(build_dir, pkg):
    """Whether `npm prune --omit=dev` would remove nothing: package.json
    declares no devDependencies and the tree npm installed (its hidden
    lockfile, node_modules/.package-lock.json) has no dev or extraneous
    package. Unknown: no."""
    dev = pkg.get("devDependencies")
    if dev:
        return False
    try:
        with open(os.path.join(build_dir, "node_modules", ".package-lock.json"), encoding="utf-8") as f:
            packages = json.load(f).get("packages")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(packages, dict):
        return False
    flags = ("dev", "devOptional", "extraneous")
    return all(isinstance(p, dict) and not any(p.get(k) for k in flags) for p in packages.values())


def cmd_prune_plan(build_dir, pm):
    """One line for bin/compile: "keep BIN PACKAGE" (the app starts with a
    program only a devDependency provides), "nothing" (npm has nothing to
    prune) or "prune"."""
    pkg = valid_package(os.path.join(build_dir, "package.json"))
    needs = needs_dev(build_dir, pkg)
    if needs:
        print("keep %s %s" % needs)
    elif pm == "npm" and nothing_to_prune(build_dir, pkg):
        print("nothing")
    else:
        print("prune")


def explain_web_process(build_dir):
    """Say which default web process bin/release will give, unless the
    Procfile has its own."""
    found = web_process(build_dir)
    if procfile_has_web(build_dir) or not found:
        return
    header("Default web process: %s (from %s)" % found)


def cmd_release(build_dir):
    found = web_process(build_dir)
    print("---")
    if found:
        print("default_process_types:")
        print("  web: %s" % json.dumps(found[0]))
    else:
        print("default_process_types: {}")


def prune_cache(cache_dir, used_file):
    with open(used_file) as f:
        used = {line.strip() for line in f if line.strip()}
    for gone in pkgcache.Cache(os.path.join(cache_dir, "runtimes"), info).prune(used):
        info("Removed %s from the cache (not used by this build)" % gone)


# --- CLI ------------------------------------------------------------------------------------


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "validate":
            valid_package(args[0])
        elif cmd == "get":
            v = get_path(read_package(args[0]), args[1])
            if isinstance(v, str):
                print(v)
        elif cmd == "has-script":
            scripts = read_package(args[0]).get("scripts")
            return 0 if isinstance(scripts, dict) and isinstance(scripts.get(args[1]), str) else 1
        elif cmd == "runtime":
            defer = args[args.index("--defer-npm") + 1] if "--defer-npm" in args[3:] else None
            cmd_runtime(args[0], args[1], args[2], defer)
        elif cmd == "install-tree":
            with open(args[0]) as f:
                install_tree(json.load(f))
        elif cmd == "package-manager":
            pm, build_dir, cache_dir, bin_dir = args[:4]
            opts = args[4:]
            default_major = "1" if pm == "yarn" else "9"
            if "--default" in opts:
                default_major = opts[opts.index("--default") + 1]
            cmd_package_manager(pm, build_dir, cache_dir, bin_dir, "--berry" in opts, "--yarn-path" in opts, default_major)
        elif cmd == "release":
            cmd_release(args[0])
        elif cmd == "prune-plan":
            cmd_prune_plan(args[0], args[1])
        elif cmd == "finish":
            explain_web_process(args[0])
            prune_cache(args[1], args[2])
        elif cmd == "semver-check":
            for line in sys.stdin:
                version, _, rng = line.rstrip("\n").partition("\t")
                try:
                    v = semver.parse_version(version)
                    print("E" if v is None else ("1" if semver.Range(rng).satisfies(v) else "0"))
                except semver.RangeError:
                    print("E")
        else:
            raise SystemExit("unknown command %s" % cmd)
    except Exception as e:
        if isinstance(e, OSError):
            e = BuildError("%s failed: %s" % (cmd, e))
        elif not isinstance(e, (BuildError, pkgcache.RegistryError)):
            raise
        sys.stdout.flush()
        print("-----> Error: " + e.title, file=sys.stderr)
        for h in e.hints:
            print(INDENT + h, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
