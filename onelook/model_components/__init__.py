"""Losses and ray sampling shared by the methods."""
