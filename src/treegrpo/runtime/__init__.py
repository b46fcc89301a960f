"""What a long run needs around the engine: the checkpoint folder format, FSDP sharding, non-finite
and not-scored guards, test-only fault injection, device and dtype names."""
