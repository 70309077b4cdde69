"""``python -m smtplb.sink --listen HOST:PORT [--profile FILE] [--record FILE]``."""

from __future__ import annotations

from smtplb.sink.server import main

raise SystemExit(main())
