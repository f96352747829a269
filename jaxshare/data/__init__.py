"""Text: named corpora from package-registry archives or local files, tokenized once, windowed."""
