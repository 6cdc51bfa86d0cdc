"""``python -m tuner_cli`` (for ``accelerate launch -m tuner_cli train ...``)."""

import sys

from tuner_cli.main import main

sys.exit(main())
