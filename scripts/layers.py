#!/usr/bin/env python3
"""Fails when the modules of tandem depend on each other in a circle.

Reads every `crate::a::b` path (in `use` lines and in code) and `super::`
path of src/, and builds two graphs: one between the top-level modules
(`cli`, `daemon`, `replication`, ...) and one between the modules inside
`replication/`. A module may use another only if that one does not use it
back, directly or through others. Prints each circle found and exits 1;
prints the layers (who uses whom) and exits 0 otherwise.
"""
import os
import re
import sys
from pathlib import Path

SRC = Path(os.environ.get("TANDEM_SRC") or Path(__file__).resolve().parent.parent / "src")
PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")


def module_of(file: Path) -> list[str]:
    """The module path of a source file: src/a/b.rs and src/a/b/mod.rs are a::b."""
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        return []
    return parts


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def targets(file: Path, text: str) -> set[tuple[str, ...]]:
    """Every module path the file names, made absolute."""
    here = module_of(file)
    out = set()
    # `use crate::{a, b::c}` and `use super::{x, y}`: expand one level of braces.
    for m in re.finditer(r"\b(crate|super)::\{([^}]*)\}", text):
        base = here[:-1] if m.group(1) == "super" else []
        for item in m.group(2).split(","):
            item = item.strip().split(" as ")[0]
            if item:
                out.add(tuple(base + item.split("::")))
    for m in PATH.finditer(text):
        if m.group(2) == "::{":
            continue
        names = m.group(2).strip(":").split("::")
        base = here[:-1] if m.group(1) == "super" else []
        out.add(tuple(base + names))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    top: dict[str, set[str]] = {}
    rep: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    known_top = {p.stem if p.is_file() else p.name for p in SRC.iterdir()} - {"lib", "main"}
    for file in sorted(SRC.rglob("*.rs")):
        here = module_of(file)
        if not here:
            continue
        text = strip_comments(file.read_text())
        # Unit tests may reach anywhere.
        text = text.split("#[cfg(test)]")[0]
        for t in targets(file, text):
            if not t or t[0] not in known_top:
                continue
            a, b = here[0], t[0]
            if a != b:
                top.setdefault(a, set()).add(b)
                why.setdefault((a, b), str(file.relative_to(SRC.parent)))
            if here[0] == "replication" and t[0] == "replication" and len(here) > 1 and len(t) > 1:
                a, b = here[1], t[1]
                is_module = (SRC / "replication" / f"{b}.rs").exists() or (SRC / "replication" / b).is_dir()
                if a != b and is_module:
                    rep.setdefault(a, set()).add(b)
                    why.setdefault((f"replication::{a}", f"replication::{b}"), str(file.relative_to(SRC.parent)))
    found = [("top-level modules", c, "") for c in cycles(top)]
    found += [("replication/", c, "replication::") for c in cycles(rep)]
    if found:
        for where, c, prefix in found:
            print(f"circle between {where}: {' <-> '.join(c)}")
            for a in c:
                for b in c:
                    if (prefix + a, prefix + b) in why:
                        print(f"  {a} uses {b} (e.g. in {why[(prefix + a, prefix + b)]})")
        return 1
    for name, g in (("top-level modules", top), ("replication/", rep)):
        print(f"{name}: no circle")
        for a in sorted(g):
            print(f"  {a} -> {', '.join(sorted(g[a]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
