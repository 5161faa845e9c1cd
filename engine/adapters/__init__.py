"""Reference exchange adapters, built only on wirestate's public API (as a user would write them).

Nothing in the engine imports this package.
"""
