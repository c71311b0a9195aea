import sys

from deepworks.cli import main

sys.exit(main())
