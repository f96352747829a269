"""Models in and out: Hugging Face directories, GGUF files, native checkpoints, registered names."""
