"""swepost: post-train open-weight language models into software-engineering agents."""

__version__ = "0.1.0"
