"""``python -m crlf ...``, as the ``crlf`` command: what ``torchrun ... -m crlf pretrain ...`` runs in each process."""

import sys

from crlf.cli import main

sys.exit(main())
