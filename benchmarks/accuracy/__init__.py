"""Planted ground truth for the quality gates: sets built offline, answers computed exactly."""
