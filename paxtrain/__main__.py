"""`python -m paxtrain ...` is the `paxtrain` command."""

import sys

from paxtrain.cli import main

sys.exit(main())
