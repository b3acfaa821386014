"""`sparsebench report`: the paper's tables (Markdown, LaTeX), plots and sample grids from the store."""

from sparsebench.report.build import build_report

__all__ = ["build_report"]
