"""Backtests: out-of-sample predictions → signals → sizing → orders → fills → equity, trades, metrics.

`portfolio.simulate` runs one shared portfolio bar by bar (a numba loop) with the fill rules of
`fills`, the costs of `costs`, the sizing of `sizing` and the exits of `stops`;
`metrics.performance_metrics` summarizes a return series and its trade log as JSON-friendly numbers.
"""
