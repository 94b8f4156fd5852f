"""Serving benchmark: the seed-style Flask/gunicorn baseline against `serving`, same model, same load.

Run `python -m bench.serving`; it prints the table and writes bench/serving/RESULTS.md.
"""
