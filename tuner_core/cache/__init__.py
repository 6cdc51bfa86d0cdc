"""Cache files: one safetensors file per item, written atomically and fingerprinted."""
