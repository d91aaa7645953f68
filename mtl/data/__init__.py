"""Training data: which files of a Delta table to read (snapshot) and how they reach PyTorch (loader)."""
