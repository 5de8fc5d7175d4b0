"""Settings for every test."""

import os

# The CLI tests read whole values out of rich tables, and rich wraps at the width it finds: a
# developer's terminal, CI's pipe and pytest-xdist's workers (which set COLUMNS=80) all differ.
os.environ["COLUMNS"] = "200"
