"""Keyturn's trust core: receipts, keys, verification, and the isolated signer process."""
