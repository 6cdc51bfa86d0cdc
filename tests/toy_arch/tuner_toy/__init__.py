"""A toy video architecture, installed like a third-party tuner plugin. Trains on CPU in seconds."""
