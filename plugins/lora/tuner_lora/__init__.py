"""LoRA and LyCORIS networks for tuner."""
