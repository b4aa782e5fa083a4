"""Browser chat: a page the example serves itself, speaking the wire protocol."""
