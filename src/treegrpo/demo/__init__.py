"""The built-in demo task: procedurally drawn shapes, a programmatic reward and a tiny SD3 base."""
