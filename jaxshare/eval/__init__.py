"""Evaluation and analysis: perplexity, parity with transformers, attention maps."""
