"""Reputation: what the outcomes of deliveries say about members and what to do
about it (response rules, suspensions, traffic shaping; SPEC §2.4)."""
