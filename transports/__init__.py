"""Byte transports and the sans-IO WebSocket protocol.

Everything here moves bytes or turns bytes into events; nothing here coordinates.
"""
