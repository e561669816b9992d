"""Builders of the built-in dataset (scripts/make_demo_data.py): real text and the synthetic world."""
