"""Chat semantics: conversations, the per-conversation log, receipts."""
