"""Harvest post-pretraining configs."""
