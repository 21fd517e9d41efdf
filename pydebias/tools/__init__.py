"""Tooling on top of the library: the ``pydebias`` command, the method comparison and
report, plots, the shortcut-localisation study and the benchmark harness. The library
core never imports this package."""
