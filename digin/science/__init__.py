"""The toy world's science harness (toy_science.py: does DiG-IN find what was planted? each check runs the CLI
tasks in-process and measures what they write) and contact sheets of its results (contact_sheet.py). The top
layer: it runs `digin.tasks` the way a user does, above the CLI.

  python -m digin.science.toy_science dev heldout
  python -m digin.science.contact_sheet set=heldout out=/tmp/sheets
"""
