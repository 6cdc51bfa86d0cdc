"""FramePack architecture plugin for tuner: the packed DiT, its encoders, section caching and sampling."""
