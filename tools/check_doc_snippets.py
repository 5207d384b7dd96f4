#!/usr/bin/env python3
"""Compiles every ```cpp code block of the documentation, so the examples cannot rot.

    python3 tools/check_doc_snippets.py [--compiler g++] [--out DIR] [-I DIR] [--isystem DIR] [PATH ...]

PATH is a Markdown file or a folder (its *.md files); the default is README.md and docs/. Run by CTest as
`doc_snippets`, against include/ with xsimd on the include path.

How a block becomes a translation unit (the rule authors need to know):
  1. Only blocks fenced as ```cpp are compiled. A block whose first line is `// not compiled` is skipped:
     use it for fragments that cannot stand alone (a signature, a sketch with `...`). A block whose first line
     is `// needs thrust_omp` is compiled only with --with-thrust-omp (pass -fopenmp and the CCCL headers
     with --flag / --isystem too), and skipped otherwise.
  2. `#include <sessa/sessa.hpp>` is put first; the block's own `#include` lines stay at file scope.
  3. A block has top-level declarations when one of its lines starts, in column 0, with `int main(`,
     `namespace`, `template`, `struct`, `class`, `enum` or `union`. Such a block is compiled as it is.
  4. Any other block is a sequence of statements: everything but its `#include` lines becomes the body of
     `int main() { ... }`.
Each block is compiled on its own with `-std=c++20 -fsyntax-only` (templates are still instantiated, so calls
are checked). `#line` directives point compiler messages at the Markdown file and line. With GCC,
<sessa/sessa.hpp> is precompiled once into DIR/pch (about 100 MB) so that each block compiles in about a second
(--no-pch turns this off).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP_MARK = "// not compiled"
THRUST_MARK = "// needs thrust_omp"
TOP_LEVEL_RE = re.compile(r"^(?:int\s+main\s*\(|namespace\b|template\b|struct\b|class\b|enum\b|union\b)")
INCLUDE_RE = re.compile(r"^\s*#\s*include\b")
FENCE_RE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Snippet:
    doc: Path
    line: int  # line of the first code line in doc
    code: list[str]


def extract(doc: Path) -> list[Snippet]:
    snippets, lines = [], doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang == "cpp":
            snippets.append(Snippet(doc, i + 2, lines[i + 1:j]))
        i = j + 1
    return snippets


def translation_unit(s: Snippet, with_thrust: bool = False) -> str | None:
    first = next((l for l in s.code if l.strip()), "")
    if first.strip().startswith(SKIP_MARK):
        return None
    if first.strip().startswith(THRUST_MARK) and not with_thrust:
        return None
    doc = s.doc.resolve().as_posix()
    out = ["#include <sessa/sessa.hpp>"]
    if any(TOP_LEVEL_RE.match(l) for l in s.code):
        out.append(f'#line {s.line} "{doc}"')
        out.extend(s.code)
        return "\n".join(out) + "\n"
    body = []
    for k, l in enumerate(s.code):
        if INCLUDE_RE.match(l):
            out.append(f'#line {s.line + k} "{doc}"')
            out.append(l)
        else:
            body.append(f'#line {s.line + k} "{doc}"')
            body.append("  " + l)
    out.append("int main() {")
    out.extend(body)
    out.append("  return 0;")
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--compiler", default="g++")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "doc_snippets",
                    help="folder for the generated sources (default: build/doc_snippets, which git ignores)")
    ap.add_argument("-I", dest="includes", action="append", default=[], type=Path)
    ap.add_argument("--isystem", action="append", default=[], type=Path)
    ap.add_argument("--flag", action="append", default=[], help="an extra compiler flag (may be repeated)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-pch", action="store_true", help="do not precompile <sessa/sessa.hpp>")
    ap.add_argument("--with-thrust-omp", action="store_true",
                    help="also compile the blocks marked `// needs thrust_omp`")
    args = ap.parse_args(argv)

    paths = args.paths or [REPO / "README.md", REPO / "docs"]
    docs: list[Path] = []
    for p in paths:
        docs.extend(sorted(p.glob("*.md")) if p.is_dir() else [p])
    includes = args.includes or [REPO / "include"]

    args.out.mkdir(parents=True, exist_ok=True)
    jobs, skipped = [], 0
    for doc in docs:
        for n, s in enumerate(extract(doc), 1):
            tu = translation_unit(s, args.with_thrust_omp)
            if tu is None:
                skipped += 1
                continue
            src = args.out / f"{doc.stem}_{n:02d}_line{s.line}.cpp"
            src.write_text(tu, encoding="utf-8")
            cmd = [args.compiler, "-std=c++20", "-fsyntax-only", *args.flag]
            cmd += [f"-I{d}" for d in includes]
            for d in args.isystem:
                cmd += ["-isystem", str(d)]
            cmd.append(str(src))
            jobs.append((s, src, cmd))

    # A precompiled <sessa/sessa.hpp>, which every snippet includes first, saves most of each compile. GCC uses
    # sessa/sessa.hpp.gch from the first include directory when its flags match, and otherwise reads the header.
    if jobs and not args.no_pch and Path(args.compiler).name.startswith(("g++", "c++")):
        pch_dir = args.out / "pch"
        (pch_dir / "sessa").mkdir(parents=True, exist_ok=True)
        header = next((d / "sessa" / "sessa.hpp" for d in includes if (d / "sessa" / "sessa.hpp").is_file()), None)
        if header is not None:
            common = ["-std=c++20", *args.flag] + [f"-I{d}" for d in includes]
            for d in args.isystem:
                common += ["-isystem", str(d)]
            r = subprocess.run([args.compiler, *common, "-x", "c++-header", str(header), "-o",
                                str(pch_dir / "sessa" / "sessa.hpp.gch")], capture_output=True, text=True)
            if r.returncode == 0:
                for _, _, cmd in jobs:
                    cmd.insert(-1, f"-I{pch_dir}")
            else:
                print(f"(no precompiled header: {r.stderr.strip()[:200]})")

    def run(job):
        s, src, cmd = job
        r = subprocess.run(cmd, capture_output=True, text=True)
        return s, src, cmd, r

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for s, src, cmd, r in pool.map(run, jobs):
            where = f"{s.doc}:{s.line - 1}"
            if r.returncode == 0:
                print(f"ok      {where}")
            else:
                failed += 1
                print(f"FAILED  {where} (generated {src})\n  {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    print(f"doc snippets: {len(jobs) - failed} of {len(jobs)} compiled, {skipped} marked `{SKIP_MARK}`, "
          f"from {len(docs)} documents")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
