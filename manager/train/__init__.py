"""The trainer: one loop for Consolidator and its baselines, with resumable checkpoints."""
