"""Jinja2 templates of the HTML pages reid writes (package data; rendered with autoescape on)."""
