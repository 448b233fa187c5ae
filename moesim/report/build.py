"""Reports for a scenario, a comparison, a sweep or a plan: simulate, draw, explain.

Every report ends with its assumptions (the specs as simulated, the calibration profile and its
measured prediction error) so a reader can tell what the numbers rest on. One module per kind
of report (``scenario``, ``comparison``, ``sweep_plan``); this one gathers their entry points.
"""

from moesim.report.common import variant
from moesim.report.comparison import comparison_report, comparison_verdict
from moesim.report.scenario import scenario_report, simulate_with_trace, traffic_matrix_MB
from moesim.report.sweep_plan import plan_report, sweep_report

__all__ = [
    "comparison_report",
    "comparison_verdict",
    "plan_report",
    "scenario_report",
    "simulate_with_trace",
    "sweep_report",
    "traffic_matrix_MB",
    "variant",
]
