"""Labels: forward returns and direction over a horizon in bars, with end times for purging."""
