"""Live delivery over STOMP: codec, embedded broker, publisher, hub, WebSocket consumer, notifications."""
