"""Assemble docs/benchmarks.md from the per-topic benchmark pages (docs/bench_*.md), each under
its own section with its headings demoted one level. Every page names the command and the machine
that produced its numbers.

    python bench/make_benchmarks_md.py
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [
    ("bench_core.md", "python bench/ground_truth.py"),
    ("bench_samplers.md", "python bench/samplers.py"),
    ("bench_models.md", "python bench/models.py"),
    ("bench_train.md", "python bench/train.py"),
    ("bench_multiscale.md", "python bench/multiscale.py"),
    ("bench_inverse.md", "the script in the page"),
]

HEADER = """# jaxdiff benchmarks

All results recorded so far, with the command that produced each table. Generated from the
per-topic pages by `python bench/make_benchmarks_md.py` (edit those pages, not this file).

**Hardware.** No GPU or TPU was lent to the tasks that produced these pages: every number is from
a 2-core CPU machine. Pages measured while that machine was shared and overloaded say so; the
2026-11-30 measurements (samplers' quality and overhead, train-step overhead, multi-scale
speed-up, the digits main command) are from an idle machine. The digits main command's time
and evaluation report are in [training.md](training.md); the evaluation metrics in
[eval.md](eval.md).

| page | script |
|---|---|
"""


def demote(text: str) -> str:
    """One more '#' on every Markdown heading outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            line = "#" + line
        lines.append(line)
    return "\n".join(lines)


def main():
    out = [HEADER]
    for page, script in PAGES:
        out.append(f"| [{page}]({page}) | `{script}` |\n")
    for page, _ in PAGES:
        with open(os.path.join(ROOT, "docs", page)) as f:
            text = f.read()
        text = demote(text)
        out.append(f"\n\n<!-- from docs/{page} -->\n\n{text.strip()}\n")
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as f:
        f.write("".join(out))


if __name__ == "__main__":
    main()
