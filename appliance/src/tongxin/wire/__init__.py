"""The binary frame format of docs/protocol.md, shared by server and clients."""
