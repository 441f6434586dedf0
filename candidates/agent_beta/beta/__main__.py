import sys

from beta.agent import main

sys.exit(main(sys.argv))
