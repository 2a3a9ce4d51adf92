"""Long-running servers: the retriever (Search-R1 API). They host envs/ and rewards/; nothing below imports
them."""
