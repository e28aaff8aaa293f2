#!/usr/bin/env python3
"""Issue 21 acceptance 1 sizes: Rust files over 600 lines, functions over 80 lines.

Run from the repository root: `python3 .ci/sizes.py [--all] [paths...]`.
Functions are counted from their `fn` line to their closing brace; anything after a
`#[cfg(test)]` line in a file is a test and is not counted for functions. Files are
counted with `wc -l` semantics (all lines), and also without their inline test module.
"""
import glob
import re
import sys

FN = re.compile(r'^(\s*)(pub(\([a-z:]+\))? )?(const )?(async )?(unsafe )?fn (\w+)')
FILE_MAX, FN_MAX = 600, 80


def scan(path):
    lines = open(path).read().split('\n')
    if lines and lines[-1] == '':
        lines.pop()
    total = len(lines)
    # A test module in its own file (`foo/tests.rs`, `foo_tests.rs`): all of it is tests.
    test_at = 0 if re.search(r'(^|/|_)tests\.rs$', path) else None
    long_fns = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if (re.match(r'\s*#\[cfg\(test\)\]', line) and test_at is None
                and i + 1 < len(lines) and re.match(r'\s*(pub(\([a-z:]+\))? )?mod ', lines[i + 1])):
            test_at = i
        m = FN.match(line)
        if m and test_at is None:
            ind = m.group(1)
            j = i
            # one-line fn or declaration without body
            if line.rstrip().endswith(';') or (line.rstrip().endswith('}') and '{' in line):
                i += 1
                continue
            while j < len(lines) and not (lines[j].startswith(ind + '}') and len(lines[j].rstrip()) == len(ind) + 1):
                j += 1
            n = j - i + 1
            if n > FN_MAX:
                long_fns.append((i + 1, m.group(7), n))
        i += 1
    return total, (test_at if test_at is not None else total), long_fns


def main():
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    show_all = '--all' in sys.argv
    files = args or sorted(glob.glob('src/**/*.rs', recursive=True))
    bad = 0
    for f in files:
        total, code, fns = scan(f)
        if total > FILE_MAX or show_all:
            note = '' if code == total else f' ({code} before tests)'
            print(f'file {f} {total}{note}')
            bad += total > FILE_MAX
        for line, name, n in fns:
            print(f'fn   {f}:{line} {name} {n}')
            bad += 1
    print(f'{bad} over the limits (files > {FILE_MAX} lines, functions > {FN_MAX} lines)')


main()
