"""marketdata: the shared layer of the market-data service (providers, cache, cache-first service).

Importing the package imports nothing else: Lambda cold starts pay only for the modules a handler uses.
"""
