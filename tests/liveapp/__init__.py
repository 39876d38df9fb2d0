"""A test app outside the product: a model of its own made live with the public API only.

Its models.py, live.py, admin.py and the page in views.py are the README's "Make your own model
live" example (the app label is "shop", as there). tests/integration/test_liveapp_ws.py and
tests/browser/test_liveapp_admin.py exercise it over WebSocket and in Chromium.
"""
