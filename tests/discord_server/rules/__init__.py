"""The Discord rules the local server enforces, one file per rule (mixins of FakeDiscord)."""
