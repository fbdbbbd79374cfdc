"""Training: mesh + logical axis rules, train state, optimizers from config (optim), loop, checkpointing."""
