"""LoRA adapters over any weight kind (healing, QLoRA)."""
