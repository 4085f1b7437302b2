"""Evaluation: numbers from predictions, in numpy only (no JAX, no torch).

`metrics` and `bootstrap` compute every reported metric and its patient-bootstrap interval;
`runs` reads and writes a run folder's files; `tables` formats them; `compare` pairs two runs
on their common test bags, `subgroups` splits a run's test bags by a manifest column, and
`detection` scores predicted lesion boxes.
"""
