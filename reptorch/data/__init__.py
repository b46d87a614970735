"""Datasets (Omniglot, Mini-ImageNet, class folders, sine) and the N-way task sampler."""
