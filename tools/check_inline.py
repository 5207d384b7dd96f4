#!/usr/bin/env python3
"""Fails when a header defines a namespace-scope function that is neither inline, constexpr nor a template.

    python3 tools/check_inline.py [PATH ...]     # default: include/sessa (every *.hpp and *.cuh below it)
    python3 tools/check_inline.py --self-test    # runs the checker on the built-in good/bad cases below

Why: a header-only library's headers are included by many translation units. A non-inline function defined in
a header is defined once per translation unit, and the program fails to link ("multiple definition") as soon as
two of them include it -- something a single-TU test never sees. xsimd checks this with a script
(test/check_inline_specifier.sh); this is the same idea for sessa, run by CTest as `check_inline`.

A definition passes when it is
  * declared `inline`, `constexpr` or `consteval` (the last two imply inline),
  * a template (`template <...>` before it, or an abbreviated template: a parameter declared with `auto`),
    except an explicit specialization `template <>`, which is an ordinary function and needs `inline`,
  * or anything inside a class body (member functions defined in the class are implicitly inline).
Out-of-class member definitions (`void parser::run() { ... }` at namespace scope) are checked like free
functions.

How, and its limits: the checker is a pragmatic scanner, not a C++ parser. It removes comments, string and
character literals and preprocessor lines, then walks the braces, keeping track of which `{` opens a namespace
(or an `extern "C"` block) and which opens anything else; each `{` met at namespace scope is classified by the
text before it, and a function definition is recognised by a parameter list `(...)` followed only by
qualifiers (const, noexcept, -> return type, requires ..., override, ...). Consequently:
  * both branches of every `#if` are scanned, and code produced by macros is invisible (a macro that expands
    to a function definition is not checked; a macro standing for `inline`, like a SESSA_INLINE, is not
    recognised unless passed with --inline-macro NAME);
  * namespace-scope variables are not checked (C++17 `inline` variables, constexpr constants and the like);
  * unusual declarators (function pointers returned without a typedef, K&R-style oddities, macros in place of
    the parameter list) can be misread; such a line can be excused with a `// check_inline: ignore` comment
    on a line of the declaration (up to the line of its opening brace).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORE_MARK = "check_inline: ignore"

# Keywords after which a parenthesised group is not a parameter list.
NON_DECLARATOR_KEYWORDS = {"decltype", "noexcept", "requires", "alignas", "sizeof", "alignof", "__attribute__",
                           "__declspec", "throw", "static_assert", "typeid", "explicit"}
CLASS_HEAD_RE = re.compile(r"^(?:(?:struct|class|union|enum)\b)")
NAMESPACE_RE = re.compile(r"^(?:inline\s+)?namespace\b")
EXTERN_BLOCK_RE = re.compile(r'^extern\s*""')  # extern "C" { (the literal is blanked to "")
# After the parameter list of a function definition only these may appear before the body.
TRAILER_RE = re.compile(
    r"^(?:\s|const\b|volatile\b|&&|&|noexcept\b|override\b|final\b|->|requires\b|try\b|=|[\w:<>,*&.\[\]()]|\.\.\.)*$")


def strip_code(text: str) -> str:
    """Blanks comments, string/char literals and preprocessor lines, keeping newlines (for line numbers)."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c in " \t":
            out.append(c)
            i += 1
            continue
        if at_line_start and c == "#":  # preprocessor line, with backslash continuations
            while i < n:
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    out.append(" \n")
                    i += 2
                    continue
                if text[i] == "\n":
                    break
                # A comment can start on a directive line; blank to its end (block comments handled below).
                if text.startswith("/*", i):
                    break
                out.append(" ")
                i += 1
            at_line_start = False
            continue
        at_line_start = False
        if text.startswith("//", i):
            # Keep the ignore mark visible to the scanner.
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i) if IGNORE_MARK not in text[i:j] else "@" + " " * (j - i - 1))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if m:
                end = text.find(")" + m.group(1) + '"', i + m.end())
                end = n if end < 0 else end + len(m.group(1)) + 2
                out.append('""' + "".join(ch if ch == "\n" else " " for ch in text[i + 2:end]))
                i = end
            else:
                out.append(c)
                i += 1
        elif c in "\"'":
            # A digit separator (1'000) is not a character literal.
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                out.append(" ")
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(c + c + " " * max(0, min(j, n - 1) - i - 1))
            i = j + 1
        else:
            if c == "\n":
                at_line_start = True
            out.append(c)
            i += 1
    return "".join(out)


def top_level_groups(s: str) -> list[tuple[int, int]]:
    """(start, end) of each parenthesised group at nesting depth 0 of s."""
    groups, depth, start = [], 0, -1
    for i, c in enumerate(s):
        if c == "(":
            if depth == 0:
                start = i
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                groups.append((start, i + 1))
            if depth < 0:
                return []
    return groups


def has_top_level(s: str, ch: str) -> bool:
    depth = 0
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ch and depth == 0:
            return True
    return False


def strip_template_prefix(stmt: str) -> tuple[str, bool, bool]:
    """Removes leading `template <...>` headers. Returns (rest, is_template, is_explicit_specialization)."""
    is_template = is_spec = False
    while True:
        m = re.match(r"template\s*<", stmt)
        if not m:
            return stmt, is_template, is_spec
        depth, i = 0, m.end() - 1
        while i < len(stmt):
            if stmt[i] == "<":
                depth += 1
            elif stmt[i] == ">":
                depth -= 1
                if depth == 0:
                    break
            elif stmt[i] == "(":  # skip (...) so that a > inside it does not end the header
                j = i
                d = 0
                while j < len(stmt):
                    d += stmt[j] == "("
                    d -= stmt[j] == ")"
                    if d == 0:
                        break
                    j += 1
                i = j
            i += 1
        params = stmt[m.end():i].strip()
        if params == "":
            is_spec = True
        else:
            is_template = True
        stmt = stmt[i + 1:].lstrip()
        # A requires-clause after the template header belongs to the template.


def classify(stmt: str, inline_macros: set[str]) -> str | None:
    """For the text before a `{` at namespace scope: 'namespace', or a problem description, or None (fine)."""
    s = " ".join(stmt.split())
    s = re.sub(r"\[\[.*?\]\]", " ", s).strip()  # attributes
    s = re.sub(r"__attribute__\s*\(\(.*?\)\)", " ", s).strip()
    if NAMESPACE_RE.match(s) or EXTERN_BLOCK_RE.match(s):
        return "namespace"
    rest, is_template, is_spec = strip_template_prefix(s)
    if CLASS_HEAD_RE.match(rest) or rest.startswith("typedef ") or rest.startswith("using "):
        return None
    # `operator=` and friends are names, not initializers.
    named = re.sub(r"\boperator\s*(\(\s*\)|\[\s*\]|<=>|[^\s(]+)", "operator_", rest)
    if has_top_level(named, "="):
        return None  # an initializer: int x[] = {...}, auto f = [](...) {...}
    groups = top_level_groups(named)
    params = None
    for start, end in groups:
        before = re.search(r"([\w~]+|>)\s*$", named[:start])
        if before and before.group(1) not in NON_DECLARATOR_KEYWORDS:
            params = (start, end)
            break
    if params is None:
        return None  # a brace initializer (std::vector<int> v{...}), an enum body, ...
    trailer = named[params[1]:]
    if not TRAILER_RE.match(trailer):
        return None
    head = named[:params[0]]
    words = set(re.findall(r"[A-Za-z_]\w*", head))
    if words & ({"inline", "constexpr", "consteval"} | inline_macros):
        return None
    if words & {"friend"}:
        return None  # not at namespace scope in practice
    if is_template and not is_spec:
        return None
    if re.search(r"\bauto\b", named[params[0]:params[1]]):
        return None  # abbreviated function template
    name = re.search(r"([\w~:]+(?:operator_)?)\s*$", head)
    name = name.group(1) if name else "?"
    if is_spec:
        return f"explicit specialization '{name}' is not inline (template <> functions are not implicitly inline)"
    return f"function '{name}' is defined in a header but is not inline, constexpr or a template"


def check_text(text: str, inline_macros: set[str]) -> list[tuple[int, str]]:
    code = strip_code(text)
    problems = []
    stack: list[str] = []  # per open brace: 'ns' (namespace scope inside), 'other', or 'paren' (inside (...))
    stmt_start = 0
    parens = 0  # ( depth within the current statement at namespace scope
    for i, c in enumerate(code):
        at_ns = all(k == "ns" for k in stack)
        if c == "(" and at_ns:
            parens += 1
        elif c == ")" and at_ns:
            parens = max(0, parens - 1)
        elif c == "{":
            if at_ns and parens > 0:
                stack.append("paren")  # a braced default argument: `const options& o = {}`
                continue
            if at_ns:
                stmt = code[stmt_start:i]
                kind = classify(stmt.replace("@", " "), inline_macros)
                first = stmt_start + (len(stmt) - len(stmt.lstrip()))
                line = code.count("\n", 0, first) + 1
                # The ignore mark may sit on any line of the declaration, up to the opening brace.
                tail = code.find("\n", i)
                excused = "@" in code[first:tail if tail >= 0 else len(code)]
                if kind == "namespace":
                    stack.append("ns")
                else:
                    stack.append("other")
                    if kind is not None and not excused:
                        problems.append((line, kind))
            else:
                stack.append("other")
            stmt_start = i + 1
            parens = 0
        elif c == "}":
            popped = stack.pop() if stack else None
            if popped != "paren":
                stmt_start = i + 1
                parens = 0
        elif c == ";" and at_ns:
            stmt_start = i + 1
            parens = 0
    return problems


def check_paths(paths: list[Path], inline_macros: set[str]) -> int:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix in (".hpp", ".cuh", ".h")))
        else:
            files.append(p)
    bad = 0
    for f in files:
        for line, msg in check_text(f.read_text(encoding="utf-8"), inline_macros):
            try:
                shown = f.resolve().relative_to(REPO)
            except ValueError:
                shown = f
            print(f"{shown}:{line}: {msg}")
            bad += 1
    if bad:
        print(f"check_inline: {bad} problem(s) in {len(files)} headers. Mark each function `inline` (or constexpr), "
              "or see `tools/check_inline.py --help` for the checker's limits.", file=sys.stderr)
        return 1
    print(f"check_inline: {len(files)} headers, every namespace-scope function is inline, constexpr or a template")
    return 0


# ------------------------------------------------------------------------------------------------ self-test
GOOD = r'''
#pragma once
#include <string>
#define SESSA_MACRO(x) void x() {}
namespace a::b {
inline int f(int x) { return x; }
constexpr int g() noexcept { return 1; }
template <class T> T h(T x) { return x; }
template <class T>
  requires(sizeof(T) > 1)
auto h2(T x) -> decltype(x + 1) { return x + 1; }
void abbreviated(auto x) { (void)x; }
struct s {
  void member() const { }           // implicitly inline
  static int smember(int) { return 0; }
  friend bool operator==(const s&, const s&) { return true; }
};
template <> struct spec_class<int> { void m() {} };
inline bool operator==(const s&, int) { return false; }
inline s& operator<<(s& o, int) { return o; }
int table[] = {1, 2, 3};
inline const auto lambda = [](int x) { return x; };
std::string text{"void nope() {"};   // "void f() {" in a string is not code
/* void in_comment() { } */
enum class color { red, green };
inline void parser_run();
class parser { void run(); };
inline void parser::run() { if (true) { } }
void declared_only(int);
namespace { inline void anon() {} }
extern "C" { inline int c_api() { return 0; } }
void excused() { } // check_inline: ignore
inline int with_default(const std::string& s = {}, int n = int{2}) { return n; }
inline void lit() { char c = '{'; (void)c; const char* s = "}"; (void)s; int n = 1'000; (void)n; }
inline std::string raw() { return R"x(void raw_fn() { )x"; }
}  // namespace a::b
'''

BAD = r'''
#pragma once
namespace a {
void plain(int x) { (void)x; }
int answer() noexcept { return 42; }
static int file_local() { return 0; }
template <> void spec<int>(int) {}
struct parser { void run(); };
void parser::run() {}
namespace inner {
std::string name() const { return "x"; }
bool operator<(const parser&, const parser&) { return false; }
}
int defaults(const std::string& s = {}, int n = int{2})
{ return n; }
}
'''


def self_test() -> int:
    good = check_text(GOOD, set())
    bad = check_text(BAD, set())
    ok = True
    if good:
        ok = False
        print("self-test: false positives in the good cases:")
        for line, msg in good:
            print(f"  line {line}: {msg}")
    expected_bad_lines = {4, 5, 6, 7, 9, 11, 12, 14}
    got = {line for line, _ in bad}
    if got != expected_bad_lines:
        ok = False
        print(f"self-test: bad cases flagged on lines {sorted(got)}, expected {sorted(expected_bad_lines)}")
        for line, msg in bad:
            print(f"  line {line}: {msg}")
    print("check_inline self-test: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help="headers or folders (default: include/sessa)")
    ap.add_argument("--inline-macro", action="append", default=[], metavar="NAME",
                    help="a macro that expands to `inline` (may be repeated)")
    ap.add_argument("--self-test", action="store_true", help="check the checker on built-in cases")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    return check_paths(args.paths or [REPO / "include" / "sessa"], set(args.inline_macro))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
