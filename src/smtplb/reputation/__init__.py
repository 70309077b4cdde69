"""Sender reputation (SPEC §2.4): bounce classification, the suppression list,
rolling counters, thresholds, quarantine and probation.

Shared state lives behind :class:`smtplb.reputation.state.State` (the spool
database now, Redis later); decisions are pure functions over it."""
