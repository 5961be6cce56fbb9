"""Thin Tornado request handlers: parse, call a service, answer."""
