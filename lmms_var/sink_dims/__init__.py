"""Sink dimensions per backbone: published values (`known`), measurement (`finder`, `validator`), `auto`."""
