"""Weight-only quantization (docs/methods.md §5): int8/int4 codes, RTN and GPTQ, the Quantized kind."""
