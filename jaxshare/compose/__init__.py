"""Composition of compression methods in one model: plans (plan.py), applying them (apply.py), budgeted plans (budget.py)."""
