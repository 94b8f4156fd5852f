"""The analyses' decisions, pure: one snapshot of counts in, one decision out, recomputable.

- `window`: the PromQL of an analysis window and its exact counts (from Prometheus' answers)
- `judge`: the canary judge (promote, hold or rollback)
- `experiment`, `experiment_html`: A/B experiments decided on ground truth, and their page
- `shadow`: a mirrored version's predictions against its primary's
- `margins`: how far a canary may trail its baseline (the judge and the alert share it)

Reading Prometheus and committing decisions is `modelctl.api`'s; nothing here does I/O.
"""
