"""The GAN training loop, the per-run context handed to methods, and the grid runner."""
