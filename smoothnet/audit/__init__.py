"""The audit: re-derive every stored privacy claim, check provenance and report freshness, and run an
empirical one-run canary audit. ``smoothnet audit`` (:mod:`smoothnet.audit.cli`) is the entry point;
:func:`smoothnet.audit.runner.run_audit` does the work. Import-light: heavy libraries load on use.
"""
