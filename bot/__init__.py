"""Keyturn's bot: Slack app, CI API, Redis state, scheduler, and the Slack emulator."""
