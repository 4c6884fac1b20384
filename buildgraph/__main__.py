import sys

from buildgraph.cli import main

sys.exit(main())
