"""Protocol Buffers payloads of the wire protocol (generated from tongxin.proto)."""
