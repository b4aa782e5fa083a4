"""The sans-IO protocol core: frames, strict validation, error codes.

Nothing here imports trio or touches a socket (a test enforces it), so every
rule of docs/protocol.md can be tested synchronously on plain values.
"""
