"""The long structural-fuzzer run: ``python bench/fuzz_artifacts.py [--cases 10000]``.

Same as ``python -m sparsecc.fuzz`` (see its docstring) with 10 000 cases by default; writes a
JSON line per case under results/fuzz/ and prints the outcome table. Exit 1 on any crash,
hang, raw exception or silent answer.
"""

import sys

from sparsecc.fuzz import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith("--cases") for a in args):
        args = ["--cases", "10000", *args]
    sys.exit(main(args))
