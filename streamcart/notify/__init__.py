"""Delivering notifications: the customer's webhook over HTTP, email and SMS through provider interfaces."""
