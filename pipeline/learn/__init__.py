"""Stages train and evaluate, and predict: the U-Net, its data, losses, metrics and inference."""
