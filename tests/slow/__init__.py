"""Real-model tests (SmolLM2-135M, gemma3-270m), every one marked `slow`; CI runs them too."""
