"""`python -m train postshare --config train/configs/smollm2_postshare.yaml [--set k=v ...]`:
the same entry as `jaxshare train ...`."""
import sys

from jaxshare.cli.train import main

sys.exit(main())
