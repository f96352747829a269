"""The model itself: configuration, parameter pytrees, the generic decoder, banks, generation."""
