"""The hostile-input suite (issue 11, item 2): crafted messages through the real Postfix and milter.

cases.py builds the messages, smtp.py sends them byte for byte, runner.py runs the stack and
measures each case, `python -m tests.hostile` prints the table, test_hostile.py asserts it.
"""
