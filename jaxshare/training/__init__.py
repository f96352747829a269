"""Post-training pieces: config, packed data, mesh rules, the trainer."""
