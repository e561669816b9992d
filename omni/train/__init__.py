"""The training engine every stage shares: config, loop, checkpoints, logging, distributed set-up."""
