"""Differential-privacy pieces: accountants (``smoothnet.privacy.accounting``).

Kept import-light: Opacus and dp-accounting load only when a function that needs them is called.
"""
