"""Sender reputation (SPEC §2.4): bounce classification, the suppression list,
rolling counters, thresholds, quarantine and probation; response rules,
suspensions and traffic shaping per member × provider (rules.py, shaping.py).

Shared state lives behind :class:`smtplb.reputation.state.State` (the spool
database now, Redis later); decisions are pure functions over it. The shaping
state (token buckets, windows, suspensions) is still per worker process."""
