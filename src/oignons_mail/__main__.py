import sys

try:
    from oignons_mail.cli import main
except ModuleNotFoundError as missing:
    # Another python3 than Debian's lacks python3-debian or python3-jinja2; run from a
    # checkout, `debian` may even be found as the checkout's debian/ folder.
    if (missing.name or "").partition(".")[0] not in ("debian", "jinja2"):
        raise
    sys.exit(
        f"oignons-mail: error: {sys.executable} cannot import {missing.name}: oignons-mail needs "
        "python3-debian and python3-jinja2. Use Debian's /usr/bin/python3 with them installed "
        "(from a checkout: bin/oignons-mail), or `pip install .` into this python"
    )

sys.exit(main())
