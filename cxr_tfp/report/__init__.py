"""Evaluation report: matplotlib figures (Agg backend, PNG) and a markdown report read by people.

:mod:`cxr_tfp.report.figures` draws from prediction arrays; :mod:`cxr_tfp.report.markdown` writes
``report.md`` from the metrics dict alone, so every number in the report is one in metrics.json.
"""
