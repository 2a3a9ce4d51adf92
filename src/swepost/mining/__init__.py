"""Mining bug-fixing tasks from git history (the `tasks-mine` stage, stages/mine.py, drives these).

    history.py     candidate commits: source and test changes within size limits; skips by reason; time windows
    execute.py     on a Ray worker: a window's environment profile; one candidate before and after, graded
    statements.py  problem statements by an LLM (no test names, no fix), else the commit message
    prompts/       the problem-statement prompt
"""
