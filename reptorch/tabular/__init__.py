"""Does Reptile help on tabular data? The study behind `reptorch tabular`.

data (tables -> floats) -> episodes (families A, B, C) -> neural (Reptile, joint, pre-training,
scratch) and baselines (scikit-learn) -> experiment (validation choices, seeds) -> report.
"""
