#!/usr/bin/env python3
"""Sums `callgrind_annotate` output (stdin) into the categories the README's breakdown uses and
prints instructions per request (argv[1] requests), largest first. Functions are attributed by
where the instructions run: inlined code counts in the function it was inlined into."""
import re
import sys

RULES = [
    ("memcpy/memset", r"memmove|memcpy|memset"),
    ("allocator (mimalloc)", r"\bmi_|_mi_|malloc|\bfree\b|realloc"),
    ("hashing", r"sip::|hash_one|BuildHasher|ahash|hashbrown"),
    ("clock reads", r"Timespec|clock_gettime|Instant"),
    ("TLS", r"rustls|ring::|ring_core|aws_lc|aes|gcm|sha"),
    ("HTTP/2 (h2)", r"\bh2::|hpack"),
    ("Pingora", r"pingora"),
    ("Weft hooks", r"weft_proxy::|weft_policy|weft_resilience"),
    ("tokio", r"tokio|mio::"),
    ("http types/parse", r"httparse|http::"),
    ("metrics (prometheus)", r"prometheus"),
    ("libc other", r"libc\.so"),
]


def category(symbol):
    for name, pattern in RULES:
        if re.search(pattern, symbol, re.IGNORECASE if name == "TLS" else 0):
            return name
    return "other"


def main():
    requests = int(sys.argv[1])
    if requests <= 0:
        sys.exit("callgrind_categories.py: requests must be positive")
    totals = {}
    for line in sys.stdin:
        m = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir = int(m.group(1).replace(",", ""))
        c = category(m.group(2))
        totals[c] = totals.get(c, 0) + ir
    if not totals:
        sys.exit("callgrind_categories.py: no functions in the input")
    for name, ir in sorted(totals.items(), key=lambda x: -x[1]):
        print(f"{name:24s} {ir / requests:10.0f}")
    print(f"{'total':24s} {sum(totals.values()) / requests:10.0f}")


main()
