"""The engine: carries a run out, generation after generation. Its rooms, top to bottom (each may
import only those below it; `lint-imports` checks it):

- `ray/` — Ray's executor, its trainer actors and the cluster checks: the only package that imports Ray.
- `controller.py` — `EvolutionController`: asks the policy, hands jobs to an executor, records every
  individual and decision. `plan.py` (preflight before any work) and `progress.py` (a hook) beside it.
- `executors/` — what an executor is (`base.py`) and the one in this process (`local.py`).
- `worker/` — developing one individual: synthesis, training, measurement, checkpoint (no Ray).
- `policy/` — the pure decisions: the specs of a generation, selection, successive halving, stop
  rules, adaptation. They read records passed in and write nothing.
- `jobs.py`, `hooks.py`, `failures.py` — the values that cross the rooms.
"""
