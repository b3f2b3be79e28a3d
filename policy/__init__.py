"""Parlor's domain: who may call whom, the directives that stop calls, and the audit chain.

Pure domain code: stdlib and store drivers only, never aiohttp or aiortc.
"""
