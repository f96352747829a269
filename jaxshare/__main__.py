import sys

from jaxshare.cli.main import main

sys.exit(main())
