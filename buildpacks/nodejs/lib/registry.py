"""The npm registry client of the nodejs buildpack: packuments, manifests,
dist-tags and tarball downloads (see pkgcache.py for what is done with them).

Python standard library only: the build may have no node yet.
"""

import base64
import gzip
import hashlib
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from pkgcache import RegistryError, human_size  # noqa: F401 (RegistryError is part of this API)

DEFAULT_REGISTRY = "https://registry.npmjs.org/"
USER_AGENT = "slugbuilder-nodejs-buildpack"
# A Node.js tarball is ~60 MB; anything far beyond is not a package.
MAX_DOWNLOAD = 1 << 30
# The abbreviated ("corgi") packument: versions with dist, engines and bin only.
CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


class NotFound(Exception):
    pass


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
        # npm's cafile replaces the default certificate authorities (as it
        # does for npm); loading only it also saves parsing a CA bundle twice.
        if cafile and os.path.isfile(cafile):
            context = ssl.create_default_context(cafile=cafile)
        else:
            context = ssl.create_default_context()
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
