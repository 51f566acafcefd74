"""Quanto: durable quant research and trading on Temporal."""

import os

__version__ = "0.1.0"

# OpenMP threads (LightGBM, XGBoost, scikit-learn) spin-wait by default; on a shared or busy machine
# that slowed boosting a thousandfold. Set before any of them loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
