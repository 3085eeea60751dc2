"""The visual report: data model (data), readers of runs and the store (sources), page (html, plots)."""
