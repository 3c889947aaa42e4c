"""The Slack emulator (``keyturn emulator``): a local stand-in for the Slack Web API and for Slack's signed
interactivity toward the bot. See ``docs/emulator.md`` and docs/design.md §2.

Entry points: :func:`keyturn.emulator.app.create_app` (ASGI), :class:`keyturn.emulator.core.EmulatorSettings`,
:class:`keyturn.emulator.client.EmulatorClient` (tests, ``keyturn dev``), :func:`keyturn.emulator.__main__.main`.
"""
