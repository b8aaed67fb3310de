"""Measurements taken on the user's own devices and recorded in the run (notes: issue 23)."""
