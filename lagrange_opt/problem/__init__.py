"""Declaring a problem: the problem class, its constraints and their specs, bounds, proxies,
and the checks of what a closure returns."""
