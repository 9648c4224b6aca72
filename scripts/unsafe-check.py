#!/usr/bin/env python3
"""Fails when an `unsafe` block, fn, impl or extern block of tandem does not
say why it is sound.

Scans every .rs file below src/, lb-health/, bench/, fuzz/ and tests/ (of
TANDEM_ROOT, the repository by default; `target` directories are skipped).
Each `unsafe` keyword of the code (not in a comment, a string or a char
literal; `unsafe_code` and the like are other words) needs a `// SAFETY:`
comment in the comment block directly above it: above the line holding the
`unsafe`, or above the statement's first line when the `unsafe` is on a line
continuing one that ends in `(`, `[`, `=`, `||` or `&&`. Attributes may sit
between the comment and the code, and the comment may go on over several
lines below its `SAFETY:`. An `unsafe fn` (or trait) may instead carry a
`# Safety` section in its doc comment.

Prints each offender as `path:line` and exits 1; prints the count of sites
and exits 0 when every one is explained.
"""
import os
import re
import sys
from pathlib import Path

ROOT = Path(os.environ.get("TANDEM_ROOT") or Path(__file__).resolve().parent.parent)
DIRS = ["src", "lb-health", "bench", "fuzz", "tests"]
UNSAFE = re.compile(r"\bunsafe\b")
# Lines a statement goes on from: the `unsafe` below them is part of it.
CONTINUED = re.compile(r"(\(|\[|=|\|\||&&)\s*$")
ATTRIBUTE = re.compile(r"^\s*#!?\[")
# How many continued lines may stand between the comment and the `unsafe`.
MAX_CONTINUED = 2


def split(text: str) -> tuple[list[str], list[str]]:
    """Each line's code (comments removed, string and char literals blanked)
    and each line's comment text."""
    code, comment = [], []
    cur_code, cur_comment = [], []
    i, n = 0, len(text)
    depth = 0  # nesting of /* */ comments

    def newline():
        code.append("".join(cur_code))
        comment.append("".join(cur_comment))
        cur_code.clear()
        cur_comment.clear()

    while i < n:
        c = text[i]
        if c == "\n":
            newline()
            i += 1
            continue
        if depth:
            if text.startswith("*/", i):
                depth -= 1
                cur_comment.append("*/")
                i += 2
            elif text.startswith("/*", i):
                depth += 1
                cur_comment.append("/*")
                i += 2
            else:
                cur_comment.append(c)
                i += 1
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            cur_comment.append(text[i:end])
            i = end
            continue
        if text.startswith("/*", i):
            depth = 1
            cur_comment.append("/*")
            i += 2
            continue
        # Raw strings: r"..", r#".."#, br"..", cr"..".
        m = re.match(r'(?:b|c)?r(#*)"', text[i:i + 300])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            end = text.find(close, i + m.end())
            end = n if end < 0 else end + len(close)
            for ch in text[i:end]:
                if ch == "\n":
                    newline()
                else:
                    cur_code.append("x")
            i = end
            continue
        if c == '"':
            j = i + 1
            cur_code.append('"')
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    if text[j + 1] == "\n":
                        newline()
                    else:
                        cur_code.append("xx")
                    j += 2
                    continue
                if text[j] == "\n":
                    newline()
                else:
                    cur_code.append("x")
                j += 1
            cur_code.append('"')
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), or a lifetime ('a).
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]*\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'", text[i:i + 16])
            if m:
                cur_code.append("'x'")
                i += m.end()
                continue
        cur_code.append(c)
        i += 1
    newline()
    return code, comment


def explained(code: list[str], comment: list[str], at: int) -> bool:
    """Whether the `unsafe` on line `at` (0-based) has its comment above."""
    is_fn = re.search(r"\bunsafe\s+(?:extern\s+\"[^\"]*\"\s+)?(?:fn|trait)\b", code[at]) is not None
    line = at
    continued = 0
    while True:
        line -= 1
        # Attributes between the comment and the item.
        while line >= 0 and ATTRIBUTE.match(code[line]) and not comment[line].strip():
            line -= 1
        if line < 0:
            return False
        if code[line].strip() == "" and comment[line].strip():
            break
        if continued < MAX_CONTINUED and CONTINUED.search(code[line]) and not comment[line].strip():
            continued += 1
            continue
        return False
    # The comment block directly above: any of its lines may hold the word.
    while line >= 0 and code[line].strip() == "" and comment[line].strip():
        text = comment[line]
        if "SAFETY:" in text:
            return True
        if is_fn and re.match(r"\s*//[/!]\s*#\s*Safety\b", text):
            return True
        line -= 1
        while line >= 0 and ATTRIBUTE.match(code[line]) and not comment[line].strip():
            line -= 1
    return False


def files() -> list[Path]:
    out = []
    for d in DIRS:
        base = ROOT / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.rs")):
            if "target" in p.relative_to(ROOT).parts:
                continue
            out.append(p)
    return out


def main() -> int:
    sites, offenders = 0, []
    for p in files():
        code, comment = split(p.read_text())
        for at, text in enumerate(code):
            for _ in UNSAFE.finditer(text):
                sites += 1
                if not explained(code, comment, at):
                    offenders.append(f"{p.relative_to(ROOT)}:{at + 1}")
    for o in offenders:
        print(o)
    if offenders:
        print(f"{len(offenders)} of {sites} unsafe sites have no SAFETY comment")
        return 1
    print(f"{sites} unsafe sites, each with its SAFETY comment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
