"""The method's math: pure tensor functions with no I/O and no state (sampling steps and their
log-probabilities, per-step plans, advantages, the clipped and likelihood-free losses)."""
