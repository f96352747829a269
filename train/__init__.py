"""Post-training programs and configs (PostShare lands here)."""
