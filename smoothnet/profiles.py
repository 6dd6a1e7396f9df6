"""Which run-record profiles are results: the one list the report and the audit share.

A record's ``profile`` says what produced it. "paper" and "improved" runs are real results; "quick" runs
(the quick profile's tiny budgets) and "fixture" records (written by tests) are not, and are labelled as
such wherever they appear.
"""

REAL_PROFILES = ("paper", "improved")
NOT_A_RESULT_PROFILES = ("quick", "fixture")
