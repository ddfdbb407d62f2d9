"""Integrations with frameworks and servers (Django, Flask, gunicorn): a room reserved for them."""
