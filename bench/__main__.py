"""``python -m bench``: the same ratio tables as ``pydebias bench``."""
import sys

from pydebias.tools.cli import main

sys.exit(main(["bench"] + sys.argv[1:]))
