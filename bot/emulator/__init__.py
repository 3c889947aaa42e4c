"""The Slack emulator (``keyturn emulator``): a local stand-in for the Slack Web API and for Slack's signed
interactivity toward the bot. See ``docs/emulator.md`` and docs/design.md §2.

Entry points: :func:`bot.emulator.app.create_app` (ASGI), :class:`bot.emulator.core.EmulatorSettings`,
:class:`bot.emulator.client.EmulatorClient` (tests, ``keyturn dev``), :func:`bot.emulator.__main__.main`.
"""
