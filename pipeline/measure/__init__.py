"""Measuring: runners for every variant, the parity comparison, timing, the browser and the INT8 budget."""
