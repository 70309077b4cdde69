"""What both SMTP sides share, with no I/O.

* ``reply``: the :class:`~smtplb.smtp.reply.Reply` type and reading replies
  off the wire (enhanced status codes included);
* ``replies``: the replies the server side says, by name;
* ``bounce``: what a negative reply means: a bounce category close to sisimai's
  and what delivery does about it (suppress, elsewhere, defer, bounce);
* ``status``: the coarse bounce kinds (hard, policy, soft, transient) for counting;
* ``framing``: ``NEED_DATA``, command lines, DATA dot-stuffing and the DATA
  body reader with its memory budget;
* ``verbs``: the SMTP commands as an enum, the triggers both state tables share.

The server session (``intake/session.py``) and the client session
(``delivery/client.py``) build on these; nothing here imports them.
"""
