"""Long jobs tracked in Django models, run by `manage.py jobworker`, reported live over STOMP."""
