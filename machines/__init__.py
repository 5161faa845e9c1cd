"""State machine definitions: what states exist and which triggers move between them.

Nothing here does I/O or knows about the engine; the engine fires triggers.
"""
