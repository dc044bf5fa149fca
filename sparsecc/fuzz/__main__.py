import sys

from sparsecc.fuzz.harness import main

sys.exit(main())
