"""Model families (LightGBM first), training, tuning, ensembles and the model registry.

Domain code only: no Temporal imports. A model is fitted on a feature frame and a label array and
predicts a score per row; artifacts are plain files (LightGBM text booster + JSON metadata).
"""
