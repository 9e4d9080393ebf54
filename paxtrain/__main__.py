"""`python -m paxtrain ...` is the `paxtrain` command."""

import sys

from paxtrain.cli.app import main

sys.exit(main())
