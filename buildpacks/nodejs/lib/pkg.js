// Small package.json helpers for the nodejs buildpack, run with the stack's
// node (so no jq or other tool is needed):
//   node pkg.js validate PACKAGE_JSON
//   node pkg.js get PACKAGE_JSON KEY.PATH       prints a string field, or nothing
//   node pkg.js has-script PACKAGE_JSON NAME    exit 0 when scripts[NAME] exists
//   node pkg.js satisfies VERSION RANGE         exit 0 yes, 1 no, 2 range not understood
"use strict";

const fs = require("fs");

function readPackage(path) {
  return JSON.parse(fs.readFileSync(path, "utf8"));
}

// --- A small semver range checker (the common forms of engines.node) --------

const PART = "(\\*|x|X|\\d+)";
const COMPARATOR = new RegExp(
  `^(\\^|~>?|>=|<=|>|<|=)?v?${PART}(?:\\.${PART})?(?:\\.${PART})?(?:-[0-9A-Za-z.-]+)?(?:\\+[0-9A-Za-z.-]+)?$`,
);

function cmp(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

function num(p) {
  return p === undefined || /^[*xX]$/.test(p) ? null : Number(p);
}

// One comparator -> list of [op, version] constraints, all of which must hold.
function constraints(text) {
  const m = COMPARATOR.exec(text);
  if (!m) throw new Error(`cannot parse '${text}'`);
  let op = m[1] || "=";
  if (op === "~>") op = "~";
  const [M, mi, p] = [num(m[2]), num(m[3]), num(m[4])];
  if (M === null) return op === "<" || op === ">" ? [["<", [0, 0, 0]]] : [];
  const lo = [M, mi ?? 0, p ?? 0];
  // Exclusive upper bound of the partial version (X-range).
  const xHi = mi === null ? [M + 1, 0, 0] : p === null ? [M, mi + 1, 0] : null;
  switch (op) {
    case "=":
      return xHi ? [[">=", lo], ["<", xHi]] : [["=", lo]];
    case ">=":
      return [[">=", lo]];
    case ">":
      return xHi ? [[">=", xHi]] : [[">", lo]];
    case "<":
      return [["<", lo]];
    case "<=":
      return xHi ? [["<", xHi]] : [["<=", lo]];
    case "~":
      return [[">=", lo], ["<", mi === null ? [M + 1, 0, 0] : [M, mi + 1, 0]]];
    case "^": {
      let hi;
      if (M > 0 || mi === null) hi = [M + 1, 0, 0];
      else if (mi > 0 || p === null) hi = [0, mi + 1, 0];
      else hi = [0, 0, p + 1];
      return [[">=", lo], ["<", hi]];
    }
  }
  throw new Error(`cannot parse '${text}'`);
}

function holds(version, [op, v]) {
  const c = cmp(version, v);
  return { "=": c === 0, ">=": c >= 0, ">": c > 0, "<": c < 0, "<=": c <= 0 }[op];
}

function satisfies(versionText, range) {
  const version = versionText.replace(/^v/, "").split(".").map(Number);
  return range.split("||").some((alt) => {
    alt = alt.trim().replace(/(>=|<=|>|<|=|\^|~>?)\s+/g, "$1");
    if (alt === "" || alt === "*" || alt === "latest") return true;
    const hyphen = /^(\S+)\s+-\s+(\S+)$/.exec(alt);
    let list;
    if (hyphen) {
      list = [...constraints(">=" + hyphen[1]), ...constraints("<=" + hyphen[2])];
    } else {
      list = alt.split(/\s+/).flatMap(constraints);
    }
    return list.every((c) => holds(version, c));
  });
}

// --- CLI ----------------------------------------------------------------------

const [cmd, a, b] = process.argv.slice(2);
try {
  switch (cmd) {
    case "validate":
      readPackage(a);
      break;
    case "get": {
      let v = readPackage(a);
      for (const k of b.split(".")) v = v && typeof v === "object" ? v[k] : undefined;
      if (typeof v === "string") process.stdout.write(v + "\n");
      break;
    }
    case "has-script": {
      const scripts = readPackage(a).scripts || {};
      process.exit(typeof scripts[b] === "string" ? 0 : 1);
      break;
    }
    case "satisfies":
      process.exit(satisfies(a, b) ? 0 : 1);
      break;
    default:
      throw new Error(`unknown command ${cmd}`);
  }
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  process.exit(2);
}
