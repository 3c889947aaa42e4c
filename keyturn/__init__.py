"""Keyturn: a fail-closed deploy gate (Slack approvals, an isolated Ed25519 signer, offline receipts).

One import namespace for the whole distribution, shaped like the trust boundary (docs/design.md §1):

- ``keyturn.signer`` (source folder ``signer/``): the trust core. Receipts, keys, verification, the signer.
- ``keyturn.bot`` (``bot/``): the Slack app, the CI API, Redis state, the scheduler. Holds no signing secret.
- ``keyturn.emulator`` (``emulator/``): the Slack, GitHub and OIDC emulators for tests and ``keyturn dev``.
- ``keyturn.cli``: the ``keyturn`` command, a lazy dispatcher.

The source folders keep the design card's top-level layout; ``keyturn/bot``, ``keyturn/signer`` and
``keyturn/emulator`` are symbolic links to them, so the same import names work from a checkout, for mypy and
in the built wheel (which holds real files under ``keyturn/``). Nothing is installed under a generic
top-level name.

The base install (``pip install keyturn``) is what a CI job needs, ``keyturn request`` and ``keyturn verify``,
with PyNaCl and ``rfc8785`` only; ``keyturn[signer]``, ``keyturn[bot]``, ``keyturn[emulator]`` and
``keyturn[github-approver]`` add each process's libraries.
"""
