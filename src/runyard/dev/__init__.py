"""Tools for development and for trying Runyard without a GPU (``runyard dev …``).

``fake_comfyui`` needs aiohttp; nothing else in Runyard imports this package.
"""
