import sys

from edge_certd.cli import main

sys.exit(main())
