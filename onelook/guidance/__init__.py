"""Diffusion priors: Stable Diffusion score distillation and single-image textual inversion (RealFusion)."""
