"""The report: assembling report.json, its renderers, figures, the recommendation and the ladder."""
