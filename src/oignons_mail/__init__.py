"""oignons-mail: Nos oignons' Postfix setup as Debian packages, built from a site file."""
