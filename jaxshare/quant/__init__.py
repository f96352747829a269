"""Weight-only quantization (METHODS.md §5): int8/int4 codes, RTN and GPTQ, the Quantized kind."""
