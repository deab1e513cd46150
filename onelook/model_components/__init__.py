"""Losses and rendering helpers shared by the methods."""
