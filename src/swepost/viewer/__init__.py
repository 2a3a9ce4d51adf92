"""See the runs: a static trajectory viewer (`swepost view`) and Markdown reports with plots (`swepost report`).

Nothing below imports this package; it reads artifacts through swepost.artifacts and draws them.
"""
