"""Tiny random-weight FramePack models saved in every real on-disk format, for tests and the demo."""
