"""Stateful task environments (swe; codeqa and search later): reset, tools, step, score, close."""
