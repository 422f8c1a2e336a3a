"""Reporting: everything here reads finished run directories and never runs a model.

- :mod:`~editbench.report.runs`: finding runs, their comparability keys and metrics;
- :mod:`~editbench.report.leaderboard`: tables (one per protocol) and their formats;
- :mod:`~editbench.report.plots`: curves (metrics vs number of edits) and bars (final metrics);
- :mod:`~editbench.report.page`: the self-contained HTML report (sweep state, tables,
  figures, protocol and metric definitions, runs).
"""
