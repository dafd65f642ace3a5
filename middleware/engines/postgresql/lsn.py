"""Write-ahead log positions as PostgreSQL prints them (``0/3000090``) and as the integers we compare."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    """``0/3000090`` -> 50331792 (the high and low 32 bits, in hex)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
