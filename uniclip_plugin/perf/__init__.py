"""Performance measurements (step cost, loss time and memory, loader, accelerator) and their targets."""
