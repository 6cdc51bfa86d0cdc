"""Datasets: media discovery, captions, frame extraction, buckets and batches."""
