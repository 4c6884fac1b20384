import sys

from buildgraph.client import main

sys.exit(main())
