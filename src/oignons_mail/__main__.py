import sys

from oignons_mail.cli import main

sys.exit(main())
