import sys

from seqtrack_mlflow.cli import main

sys.exit(main())
