import sys

from jaxshare.cli import main

sys.exit(main())
