"""Passes that make a model smaller or faster: each reads a model and writes a new one."""
