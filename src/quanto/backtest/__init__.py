"""Backtests: out-of-sample predictions → target positions → fills at the next open → equity, trades, metrics.

`engine.backtest_predictions` simulates one equal-capital sleeve per symbol (vectorized with numpy);
`metrics.performance_metrics` summarizes a return series and its trade log as JSON-friendly numbers.
"""
