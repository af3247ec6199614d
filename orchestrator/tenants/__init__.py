"""Tenants: who a request belongs to, their fair share, token limits and usage."""
