"""``python -m treegrpo`` (and ``accelerate launch -m treegrpo train ...``)."""

from treegrpo.cli import main

raise SystemExit(main())
