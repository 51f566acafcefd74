"""Execution: the broker protocol and its Alpaca adapter, the local paper exchange, the risk engine and
the trading loop. Domain code: no temporalio here (the trading workflow and its activities wrap it)."""
