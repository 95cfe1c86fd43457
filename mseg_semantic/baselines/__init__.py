"""Baselines MSeg compares against: MGDA multi-task learning (mgda.py) and CCSA domain generalization (ccsa.py)."""
