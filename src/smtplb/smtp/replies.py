"""The replies the server side says, by name (Postfix's wording where it has one)."""

from __future__ import annotations

from typing import Final

from smtplb.smtp.reply import Reply

OK: Final = Reply(250, "2.0.0", "Ok")
MAIL_OK: Final = Reply(250, "2.1.0", "Ok")
RCPT_OK: Final = Reply(250, "2.1.5", "Ok")
DATA_GO: Final = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE: Final = Reply(221, "2.0.0", "Bye")
HELP: Final = Reply(214, "2.0.0", "See RFC 5321: https://www.rfc-editor.org/rfc/rfc5321")
TLS_GO: Final = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK: Final = Reply(235, "2.7.0", "Authentication successful")
TOO_MANY_ERRORS: Final = Reply(421, "4.7.0", "Error: too many errors")

BAD_SEQUENCE: Final = Reply(503, "5.5.1", "Error: bad sequence of commands")
NEED_HELO: Final = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL: Final = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT: Final = Reply(503, "5.5.1", "Error: need RCPT command")
NO_RECIPIENTS: Final = Reply(554, "5.5.1", "Error: no valid recipients")
NESTED_MAIL: Final = Reply(503, "5.5.1", "Error: nested MAIL command")
IN_TRANSACTION: Final = Reply(503, "5.5.1", "Error: MAIL transaction in progress")

UNKNOWN_COMMAND: Final = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Error: line too long")
BARE_LF: Final = Reply(500, "5.5.2", "Error: bare <LF> received; commands end with <CR><LF>")
BARE_CR: Final = Reply(500, "5.5.2", "Error: bare <CR> received in command")
BAD_BYTES: Final = Reply(500, "5.5.2", "Error: invalid characters in command")
VRFY_DISABLED: Final = Reply(502, "5.5.1", "VRFY command is disabled")
NO_PARAMS: Final = Reply(555, "5.5.4", "Error: unsupported parameter")

NEED_SMTPUTF8: Final = Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8")
BAD_SENDER: Final = Reply(501, "5.1.7", "Error: bad sender address syntax")
BAD_RECIPIENT: Final = Reply(501, "5.1.3", "Error: bad recipient address syntax")
RELAY_DENIED: Final = Reply(554, "5.7.1", "Error: relay access denied")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Error: too many recipients")

MESSAGE_TOO_BIG: Final = Reply(552, "5.3.4", "Error: message size exceeds fixed limit")
BARE_NEWLINE_IN_DATA: Final = Reply(
    550, "5.6.0", "Error: bare <CR> or <LF> in message content; lines must end with <CR><LF>"
)
NUL_IN_DATA: Final = Reply(
    554, "5.6.0", "Error: NUL byte in message content; BINARYMIME is not supported"
)
NO_STORAGE: Final = Reply(452, "4.3.1", "Insufficient system storage, try again later")

AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Error: authentication required")
AUTH_CANCELLED: Final = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_UNDECODABLE: Final = Reply(501, "5.5.2", "Error: cannot decode AUTH response")
AUTH_FAILED: Final = Reply(535, "5.7.8", "Error: authentication credentials invalid")
AUTH_MECHANISM: Final = Reply(504, "5.5.4", "Error: unrecognized authentication type")
AUTH_NEEDS_TLS: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_DISABLED: Final = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_TWICE: Final = Reply(503, "5.5.1", "Error: already authenticated")
TLS_UNAVAILABLE: Final = Reply(454, "4.7.0", "TLS not available")
TLS_TWICE: Final = Reply(503, "5.5.1", "Error: TLS already active")
