"""Export a torch model to a runtime's format, verified against the parent."""
