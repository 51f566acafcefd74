"""Research reports: one Jinja2 template rendered to HTML and, through WeasyPrint, to PDF.

`ReportData` holds everything a report shows (already computed: this package formats and draws,
it does not evaluate). `render_report(data, out_dir, formats)` writes `report.html` and/or
`report.pdf` atomically. Charts are matplotlib PNGs embedded as data URIs, so a report is one
self-contained file that loads nothing from the network.
"""

from quanto.reports.render import ReportData, render_report

__all__ = ["ReportData", "render_report"]
