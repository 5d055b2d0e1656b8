"""Generated protobuf stubs (webb.api.flow, .observer, .peer, .relay); see scripts/gen_proto.py."""
