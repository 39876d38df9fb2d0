"""A test app outside the product: a model of its own made live with the public API only.

Its models.py, live.py, admin.py and the page in views.py are the README's "Make your own model
live" example (the app label is "shop", as there). tests/integration/test_liveapp_ws.py and
tests/browser/test_liveapp.py exercise it over WebSocket and in Chromium. Beyond the example,
templates/admin/shop/order/change_list.html puts the bell and toasts in its admin, as the jobs
admin has them.
"""
