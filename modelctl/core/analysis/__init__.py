"""The analyses' decisions, pure: one snapshot of counts in, one decision out, recomputable.

Reading Prometheus and the logs, and committing decisions, is `modelctl.api`'s; nothing here
does I/O. By the part each analysis needs:

- `window`: the PromQL of an analysis window and its exact counts per version (every analysis)
- `snapshot`: the canary snapshot (format, JSON Schema, built from window counts), `digest`, `finite`
- `sequential`: e-values and confidence sequences, valid however often one looks
- `buckets`: what a Prometheus histogram's buckets resolve (quantiles, thresholds, tail slope)
- `metrics`: the canary judge's metrics, one definition each; `judge`: its decision
- `margins`: how far a canary may trail its baseline (the judge and the alert share them)
- `experiment`, `experiment_html`: A/B experiments decided on ground truth, and their page
- `shadow`: a mirrored version's predictions against its primary's

Importing this package loads none of them (`infra` reads `margins` without scipy).
"""
