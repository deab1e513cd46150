"""Building blocks of fields: latent-conditioned MLPs and the per-image latent table."""
