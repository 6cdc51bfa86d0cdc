"""Sample generation during training and ``tuner generate``: requests, prompt files, video files."""
