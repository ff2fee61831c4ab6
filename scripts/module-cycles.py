#!/usr/bin/env python3
"""Fails when the modules of a crate import one another in a cycle.

Usage: scripts/module-cycles.py [CRATE_SRC_DIR ...]   (default: every workspace crate's src/)

A module is a file: `src/lib.rs` or `src/main.rs` is the crate root, `src/a.rs` and
`src/a/mod.rs` are `a`, `src/a/b.rs` is `a::b`. Every path a file names that starts with
`crate::`, `super::` or `self::` (in `use` lines, with `{…}` groups expanded, and in code), or
in a `use` line with the name of one of the module's children, is resolved to the longest
known module it starts with, and counts as an edge from the file's module to that one: a
parent that re-exports a child depends on it. Declaring a child (`mod a;`) is not an edge, nor
is a path to the module itself. `#[cfg(test)]` blocks and test files
(`tests.rs`) are left out: a test may reach across layers. Cycles are strongly connected
components of more than one module; each is printed with the edges that close it, and the
script exits 1.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_comments_and_tests(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # Drop `#[cfg(test)]` items: from the attribute to the end of the braced block after it.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        j = text.find("{", m.end())
        semi = text.find(";", m.end())
        if j == -1 or (semi != -1 and semi < j):
            i = semi + 1 if semi != -1 else len(text)
            continue
        depth = 0
        k = j
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def expand_groups(text: str) -> list[str]:
    """Every `prefix::...` path in the text, with `use a::{b, c::{d}}` expanded."""
    paths = []

    def expand(prefix: str, body: str):
        depth, start, items = 0, 0, []
        for k, ch in enumerate(body):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(body[start:k])
                start = k + 1
        items.append(body[start:])
        for item in items:
            item = item.strip()
            if not item:
                continue
            m = re.match(r"^([\w:]*?)::\{(.*)\}$", item, flags=re.S)
            if m:
                expand(prefix + "::" + m.group(1) if m.group(1) else prefix, m.group(2))
            else:
                name = re.split(r"\s+as\s+", item)[0].strip()
                paths.append(prefix + "::" + name if name != "self" else prefix)

    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)::\{", text):
        depth, k = 0, m.end() - 1
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        expand(m.group(1), text[m.end() : k])
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        paths.append(m.group(1))
    return paths


def resolve(path: str, here: tuple[str, ...], is_mod_file: bool, modules: set) -> tuple | None:
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        # `self` is the module itself; `super` its parent. In `a/b.rs`, self = a::b.
        base = here
        rest = parts
        while rest and rest[0] in ("self", "super"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    best = base
    cur = base
    for part in rest:
        cur = cur + (part,)
        if cur in modules:
            best = cur
        else:
            break
    return best


def check(src: Path) -> list[list[tuple]]:
    files = [f for f in src.rglob("*.rs") if f.name != "tests.rs"]
    modules = {module_of(src, f) for f in files}
    edges: dict[tuple, set] = {m: set() for m in modules}
    for f in files:
        here = module_of(src, f)
        text = strip_comments_and_tests(f.read_text())
        for path in expand_groups(text):
            target = resolve(path, here, f.name == "mod.rs", modules)
            if target is None or target == here:
                continue
            if target == ():
                continue  # the crate root (lib.rs only declares and re-exports)
            edges[here].add(target)
        # `use child::…` in a module that has that child.
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            tree = m.group(1).strip()
            first = re.split(r"::|\s|\{", tree, maxsplit=1)[0]
            if here + (first,) in modules:
                target = resolve("self::" + re.sub(r"::\{.*", "", tree, flags=re.S), here, True, modules)
                if target not in (None, here):
                    edges[here].add(target)
    return sccs(edges), edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def name(module: tuple) -> str:
    return "::".join(module) or "crate"


def main() -> int:
    dirs = [Path(d) for d in sys.argv[1:]]
    if not dirs:
        dirs = sorted(p.parent for p in ROOT.glob("*/Cargo.toml") if (p.parent / "src").is_dir())
        dirs += sorted(p.parent for p in ROOT.glob("testing/*/Cargo.toml") if (p.parent / "src").is_dir())
        dirs = [d / "src" for d in dirs]
    failed = False
    for src in dirs:
        cycles, edges = check(src)
        for comp in cycles:
            failed = True
            members = set(comp)
            print(f"{src}: modules in a cycle: {', '.join(sorted(name(m) for m in comp))}")
            for m in sorted(comp):
                for t in sorted(edges[m] & members):
                    print(f"    {name(m)} -> {name(t)}")
    if not failed:
        print(f"no module cycles in {len(dirs)} crates")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
