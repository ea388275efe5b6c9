"""Semantic versions and ranges as npm reads them (node-semver's rules).

Used to resolve `engines.node`, `engines.npm`, `engines.yarn`/`engines.pnpm`
against the versions a registry offers, without needing node itself. A range
is a list of alternatives (`||`); an alternative is a list of primitive
comparators (`<`, `<=`, `>`, `>=`, `=` and a full version) that must all
hold. Carets, tildes, x-ranges and hyphen ranges are rewritten into those
primitives exactly as node-semver does, including its `-0` upper bounds, so
that prereleases only match when the range names a prerelease of the same
`major.minor.patch`.
"""

import re

__all__ = ["RangeError", "Version", "parse_version", "Range", "max_satisfying"]


class RangeError(ValueError):
    """A range or version npm would not accept."""


_NUM = r"0|[1-9]\d*"
_PRE_ID = r"[0-9A-Za-z-]+"
_VERSION_RE = re.compile(
    r"^\s*[=v]*\s*(%s)\.(%s)\.(%s)(?:-(%s(?:\.%s)*))?(?:\+[0-9A-Za-z.-]+)?\s*$"
    % (_NUM, _NUM, _NUM, _PRE_ID, _PRE_ID)
)
_XR = r"0|[1-9]\d*|[xX*]"
_COMPARATOR_RE = re.compile(
    r"^(<=|>=|<|>|=|~>?|\^)?[v=\s]*(%s)(?:\.(%s)(?:\.(%s)(?:-(%s(?:\.%s)*))?(?:\+[0-9A-Za-z.-]+)?)?)?$"
    % (_XR, _XR, _XR, _PRE_ID, _PRE_ID)
)
_PARTIAL = r"[v=\s]*(?:%s)(?:\.(?:%s)(?:\.(?:%s)(?:-%s(?:\.%s)*)?(?:\+[0-9A-Za-z.-]+)?)?)?" % (
    _XR,
    _XR,
    _XR,
    _PRE_ID,
    _PRE_ID,
)
_HYPHEN_RE = re.compile(r"^\s*(%s)\s+-\s+(%s)\s*$" % (_PARTIAL, _PARTIAL))
_OP_SPACE_RE = re.compile(r"(<=|>=|<|>|=|~>?|\^)\s+")


class Version:
    """A full semver version; ordered by semver precedence (build ignored)."""

    __slots__ = ("major", "minor", "patch", "pre", "text")

    def __init__(self, major, minor, patch, pre=()):
        self.major, self.minor, self.patch = major, minor, patch
        self.pre = tuple(pre)
        core = "%d.%d.%d" % (major, minor, patch)
        self.text = core + ("-" + ".".join(str(p) for p in self.pre) if self.pre else "")

    @property
    def core(self):
        return (self.major, self.minor, self.patch)

    def _key(self):
        # A release sorts after its prereleases; numeric identifiers sort
        # before alphanumeric ones.
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        return (self.core, 0 if self.pre else 1, pre)

    def __eq__(self, other):
        return self._key() == other._key()

    def __lt__(self, other):
        return self._key() < other._key()

    def __le__(self, other):
        return self._key() <= other._key()

    def __gt__(self, other):
        return self._key() > other._key()

    def __ge__(self, other):
        return self._key() >= other._key()

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        return self.text

    def __repr__(self):
        return "Version(%s)" % self.text


def _pre_ids(text):
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def parse_version(text):
    """A full version (`1.2.3`, `v1.2.3-rc.1+build`), or None."""
    m = _VERSION_RE.match(text or "")
    if not m:
        return None
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3)), _pre_ids(m.group(4)))


def _is_x(part):
    return part is None or part in ("x", "X", "*")


def _v(major, minor, patch, pre=()):
    return Version(major, minor, patch, pre)


_ZERO = (0,)  # node-semver's `-0`: below every prerelease of that version
_ANY = None  # a comparator that every version satisfies
_NONE = [("<", _v(0, 0, 0, (0,)))]  # a set nothing satisfies


def _parts(regex, text):
    """(op, major, minor, patch, prerelease) of a comparator; after an `x`
    only more `x`s may follow (npm rejects `1.x.2` and `x.1`)."""
    m = regex.match(text)
    if not m:
        raise RangeError("cannot parse '%s'" % text)
    op, M, mi, p, pre = m.groups()
    seen_x = False
    for part in (M, mi, p):
        if part is None:
            break
        if _is_x(part):
            seen_x = True
        elif seen_x:
            raise RangeError("cannot parse '%s'" % text)
    if seen_x and pre:
        raise RangeError("cannot parse '%s'" % text)
    return op, M, mi, p, pre


def _desugar(comp):
    """One comparator token -> list of primitive (op, Version), or [_ANY]."""
    op, M, mi, p, pre = _parts(_COMPARATOR_RE, comp)
    pre = _pre_ids(pre)
    if op == "~>":
        op = "~"
    if _is_x(M):
        mi = p = None
    elif _is_x(mi):
        p = None
    xM, xm, xp = _is_x(M), _is_x(mi), _is_x(p)

    if op == "~":
        if xM:
            return [_ANY]
        Mn = int(M)
        if xm:
            return [(">=", _v(Mn, 0, 0)), ("<", _v(Mn + 1, 0, 0, _ZERO))]
        mn = int(mi)
        lo = _v(Mn, mn, 0) if xp else _v(Mn, mn, int(p), pre)
        return [(">=", lo), ("<", _v(Mn, mn + 1, 0, _ZERO))]

    if op == "^":
        if xM:
            return [_ANY]
        Mn = int(M)
        if xm:
            return [(">=", _v(Mn, 0, 0)), ("<", _v(Mn + 1, 0, 0, _ZERO))]
        mn = int(mi)
        if xp:
            hi = _v(0, mn + 1, 0, _ZERO) if Mn == 0 else _v(Mn + 1, 0, 0, _ZERO)
            return [(">=", _v(Mn, mn, 0)), ("<", hi)]
        pn = int(p)
        if Mn == 0:
            hi = _v(0, 0, pn + 1, _ZERO) if mn == 0 else _v(0, mn + 1, 0, _ZERO)
        else:
            hi = _v(Mn + 1, 0, 0, _ZERO)
        return [(">=", _v(Mn, mn, pn, pre)), ("<", hi)]

    # Primitive operators and x-ranges.
    if xM:
        return _NONE if op in ("<", ">") else [_ANY]
    Mn = int(M)
    if not (xm or xp):
        return [(op or "=", _v(Mn, int(mi), int(p), pre))]
    mn = 0 if xm else int(mi)
    if not op or op == "=":
        if xm:
            return [(">=", _v(Mn, 0, 0)), ("<", _v(Mn + 1, 0, 0, _ZERO))]
        return [(">=", _v(Mn, mn, 0)), ("<", _v(Mn, mn + 1, 0, _ZERO))]
    if op == ">":
        return [(">=", _v(Mn + 1, 0, 0) if xm else _v(Mn, mn + 1, 0))]
    if op == "<=":
        return [("<", _v(Mn + 1, 0, 0, _ZERO) if xm else _v(Mn, mn + 1, 0, _ZERO))]
    if op == "<":
        return [("<", _v(Mn, mn, 0, _ZERO))]
    return [(">=", _v(Mn, mn, 0))]  # >=


def _hyphen(lo_text, hi_text):
    out = []
    _, M, mi, p, pre = _parts(_COMPARATOR_RE, lo_text.strip())
    if not _is_x(M):
        if _is_x(mi):
            out.append((">=", _v(int(M), 0, 0)))
        elif _is_x(p):
            out.append((">=", _v(int(M), int(mi), 0)))
        else:
            out.append((">=", _v(int(M), int(mi), int(p), _pre_ids(pre))))
    _, M, mi, p, pre = _parts(_COMPARATOR_RE, hi_text.strip())
    if not _is_x(M):
        if _is_x(mi):
            out.append(("<", _v(int(M) + 1, 0, 0, _ZERO)))
        elif _is_x(p):
            out.append(("<", _v(int(M), int(mi) + 1, 0, _ZERO)))
        else:
            out.append(("<=", _v(int(M), int(mi), int(p), _pre_ids(pre))))
    return out or [_ANY]


def _holds(version, op, bound):
    if op == "=":
        return version == bound
    if op == ">=":
        return version >= bound
    if op == ">":
        return version > bound
    if op == "<":
        return version < bound
    return version <= bound  # <=


class Range:
    """An npm version range: `Range("^20.1 || 22.x").satisfies(v)`."""

    def __init__(self, text):
        if not isinstance(text, str):
            raise RangeError("a range must be a string")
        self.text = text
        self.sets = []
        for alt in re.split(r"\s*\|\|\s*", text.strip()):
            alt = alt.strip()
            hyphen = _HYPHEN_RE.match(alt)
            if hyphen:
                self.sets.append(_hyphen(hyphen.group(1), hyphen.group(2)))
                continue
            alt = _OP_SPACE_RE.sub(lambda m: m.group(1), alt)
            tokens = alt.split()
            if not tokens:
                self.sets.append([_ANY])
                continue
            comps = []
            for token in tokens:
                comps.extend(_desugar(token))
            self.sets.append(comps)

    def satisfies(self, version):
        return any(self._set_holds(version, s) for s in self.sets)

    @staticmethod
    def _set_holds(version, comps):
        for c in comps:
            if c is not _ANY and not _holds(version, c[0], c[1]):
                return False
        if version.pre:
            # A prerelease only matches a set that names a prerelease of the
            # same major.minor.patch.
            return any(c is not _ANY and c[1].pre and c[1].core == version.core for c in comps)
        return True


def max_satisfying(versions, range_):
    """The newest of `versions` (Version objects) that `range_` admits."""
    best = None
    for v in versions:
        if range_.satisfies(v) and (best is None or v > best):
            best = v
    return best
