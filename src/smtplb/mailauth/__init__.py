"""Sender authentication: DKIM signing and keys, SPF and DMARC checks."""
