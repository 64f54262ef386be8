"""Reports people look at: the evaluation report (``xmr evaluate --report DIR``), the
comparison of two (``xmr report compare``). Plots need matplotlib (extra ``report``), imported
only when a report is drawn."""

from xmr.workflows.report.evaluation import build_evaluation_report

__all__ = ["build_evaluation_report"]
