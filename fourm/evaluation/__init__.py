"""Downstream evaluation of generated predictions against ground truth."""
