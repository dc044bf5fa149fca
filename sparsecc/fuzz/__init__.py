"""A structural fuzzer for .scc artifacts: the attacker who edits an artifact and recomputes
its checksum.

Each case takes a real artifact, applies one structural mutation (a shape, a dtype, an alias,
an attribute, an index array, a value count, a zip member...) and rewrites the checksum, then a
worker process loads and runs it at two batch sizes. Workers are separate processes, so a crash
is seen as a crash (a signal), a hang as a timeout (the worker is killed and replaced); the
harness knows which case was in flight. Outcomes:

* ``rejected`` / ``run-error`` — a SparseccError at load / at the call (good);
* ``same`` — accepted, same answer as the unmutated artifact (the edit did not matter);
* ``changed`` — accepted with another answer after an edit that describes another valid model
  (a value, an activation, an in-range index);
* failures: ``crash``, ``hang``, ``raw`` (a Python exception that is not a SparseccError) and
  ``silent`` (a structurally invalid edit accepted with a different answer).

``python -m sparsecc.fuzz --cases 10000`` runs a campaign (``bench/fuzz_artifacts.py`` wraps
it); ``tests/runtime/test_fuzz.py`` runs a few hundred cases in CI.
"""

from sparsecc.fuzz.harness import Summary, Worker, build_seeds, campaign, main, worker_main
from sparsecc.fuzz.mutate import (
    FAILURES,
    Case,
    Parts,
    _bomb_zip,
    make_case,
    read_parts,
    write_parts,
)

__all__ = ["FAILURES", "Case", "Parts", "Summary", "Worker", "_bomb_zip", "build_seeds",
           "campaign", "main", "make_case", "read_parts", "worker_main", "write_parts"]
